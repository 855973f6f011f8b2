"""Speed benchmark: training seconds per step per preset, inference seconds per megapixel, peak memory.

    python benchmarks/speed.py                       # CPU: every preset, fp32, 2 threads, crop 64, batch 4
    python benchmarks/speed.py --presets small --steps 30
    python benchmarks/speed.py --device cuda         # GPU: fp32 and bf16, and the largest batch that fits

Each measurement runs in a fresh subprocess so that its peak memory is its own. This machine's speed
drifts (shared cores), so a calibration line times one 3x3 convolution (64->64 channels, 4x64x64,
forward+backward) next to the figures; compare runs through it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def calibration(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(4, 64, 64, 64, requires_grad=True)
    w = torch.randn(64, 64, 3, 3, requires_grad=True)
    times = []
    for _ in range(25):
        t = time.perf_counter()
        torch.nn.functional.conv2d(x, w, padding=1).sum().backward()
        times.append(time.perf_counter() - t)
    return float(np.median(times[5:]))


def train_speed(preset: str, steps: int, threads: int, device: str, bf16: bool, batch: int, crop: int,
                channels_last: bool = False) -> dict:
    import torch

    from napari_cosdd.engine.config import model_config_from_preset
    from napari_cosdd.engine.device import prepare_cpu, resolve_device
    from napari_cosdd.engine.nets.model import COSDD

    torch.set_num_threads(threads)
    prepare_cpu()
    torch.manual_seed(0)
    dev = resolve_device(device)
    model = COSDD(model_config_from_preset(preset, crop)).to(dev).train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    groups = model.parameter_groups()
    optimisers = [torch.optim.Adamax(p, lr=2e-3) for p in groups.values()]
    from napari_cosdd.synthetic import make_dataset

    noisy, _ = make_dataset("stripes", n_images=4, shape=(256, 256), seed=0)
    noisy = (noisy - noisy.mean()) / noisy.std()
    rng = np.random.default_rng(0)
    use_bf16 = bf16  # on a CPU too: bf16 autocast where the CPU has bf16 instructions (AVX-512 bf16, AMX)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def batch_of_crops():
        out = []
        for _ in range(batch):
            i, y, x = rng.integers(4), rng.integers(256 - crop), rng.integers(256 - crop)
            out.append(noisy[i, None, y:y + crop, x:x + crop])
        return torch.from_numpy(np.stack(out)).to(dev).contiguous(memory_format=layout)

    times = []
    for i in range(steps + 5):
        x = batch_of_crops()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            losses = model.losses(x)
        total = losses["elbo"] + losses["signal"] + losses["direct"]
        for o in optimisers:
            o.zero_grad(set_to_none=True)
        total.backward()
        for p in groups.values():
            torch.nn.utils.clip_grad_norm_(p, 10.0)
        for o in optimisers:
            o.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 5:  # warm-up excluded
            times.append(time.perf_counter() - t)
    out = {"preset": preset, "s_per_step_median": float(np.median(times)), "s_per_step_min": float(np.min(times)),
           "steps": steps, "batch": batch, "crop": crop, "bf16": use_bf16, "channels_last": channels_last,
           "peak_rss_mib": _peak_rss_mib(),
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if dev.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def infer_speed(preset: str, size: int, threads: int, device: str, method: str, tile: int | None,
                samples: int, repeats: int = 1) -> dict:
    import torch

    from napari_cosdd.engine.config import model_config_from_preset
    from napari_cosdd.engine.inference import denoise
    from napari_cosdd.engine.nets.model import COSDD
    from napari_cosdd.synthetic import add_stripes_noise, clean_image

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = COSDD(model_config_from_preset(preset, 64)).eval()
    image = add_stripes_noise(clean_image((size, size), seed=1), seed=2)
    base_rss = _peak_rss_mib()
    denoise(model, image[:64, :64], "YX", method=method, n_samples=1, device=device)  # warm-up
    times = []
    for _ in range(repeats):  # the fastest of `repeats`: the host's load only ever adds time
        t = time.perf_counter()
        res = denoise(model, image, "YX", method=method, n_samples=samples, variance=(method == "sample"),
                      tile=tile, device=device)
        times.append(time.perf_counter() - t)
    seconds = min(times)
    mpx = size * size / 1e6
    per = seconds / mpx / (samples if method == "sample" else 1)
    return {"preset": preset, "method": method, "size": size, "tile": res.info["tile"],
            "tiles": res.info["tiles"], "seconds": seconds,
            ("s_per_mpx_per_sample" if method == "sample" else "s_per_mpx"): per,
            "peak_rss_mib": _peak_rss_mib(), "rss_before_mib": base_rss}


def autocorr_speed(size: int, repeats: int = 5) -> dict:
    """Noise autocorrelation of a size x size frame: automatic tiles, and the full-frame residual."""
    from napari_cosdd.engine.autocorrelation import noise_autocorrelation
    from napari_cosdd.synthetic import add_stripes_noise, clean_image

    clean = clean_image((size, size), seed=1)
    noisy = add_stripes_noise(clean, seed=2)
    out = {"size": size}
    for name, kwargs in (("auto_tiles_s", {}), ("residual_s", {"denoised": clean})):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            result = noise_autocorrelation(noisy, **kwargs)
            times.append(time.perf_counter() - t)
        out[name] = float(np.median(times))
        out[name.replace("_s", "_orientation")] = result.orientation
    return out


def _child(kind: str, kwargs: dict) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {sys.path[0]!r}); import speed; "
            f"print(json.dumps(speed.{kind}(**json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed", **kwargs}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _inference_rows(args) -> None:
    for size in args.infer_size:
        for method, samples in (("direct", 1), ("sample", args.infer_samples)):
            r = _child("infer_speed", dict(preset=args.infer_preset, size=size, threads=args.threads,
                                           device=args.device, method=method, tile=None, samples=samples,
                                           repeats=args.infer_repeats))
            print("infer", json.dumps(r), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="*", default=["tiny", "small", "default", "large"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--largest-start", type=int, default=None, help="first batch of the largest-batch search (GPU)")
    p.add_argument("--infer-preset", default="small")
    p.add_argument("--infer-size", type=int, nargs="+", default=[1024],
                   help="sides of the square images for the direct and sampled inference rows")
    p.add_argument("--infer-samples", type=int, default=4, help="posterior samples in the sampled rows")
    p.add_argument("--infer-repeats", type=int, default=3, help="inference rows keep the fastest of this many runs")
    p.add_argument("--inference-only", action="store_true",
                   help="only the direct and sampled inference rows (no training, autocorrelation or big image)")
    p.add_argument("--big", type=int, default=2048, help="side of the image for the memory-bounded direct run")
    p.add_argument("--skip-inference", action="store_true")
    p.add_argument("--autocorr-only", action="store_true", help="only the autocorrelation timing")
    p.add_argument("--cpu-variants", action="store_true",
                   help="training only, CPU: fp32 and bf16 autocast, each with and without channels-last")
    args = p.parse_args()

    import realdata as R  # here, not at the top: each measurement's subprocess imports this module

    print(f"# machine: {R.machine_name(platform)}, {args.threads} threads, device {args.device}")
    print(f"# calibration: conv3x3 64->64 4x64x64 fwd+bwd {calibration(args.threads) * 1e3:.1f} ms")
    if args.inference_only:
        _inference_rows(args)
        print(f"# calibration after: {calibration(args.threads) * 1e3:.1f} ms")
        return
    print("autocorr", json.dumps(_child("autocorr_speed", dict(size=args.big))), flush=True)
    if args.autocorr_only:
        return
    if args.cpu_variants:
        for preset in args.presets:
            for bf16 in (False, True):
                for channels_last in (False, True):
                    r = _child("train_speed", dict(preset=preset, steps=args.steps, threads=args.threads,
                                                   device="cpu", bf16=bf16, batch=args.batch, crop=args.crop,
                                                   channels_last=channels_last))
                    print("train", json.dumps(r), flush=True)
        print(f"# calibration after: {calibration(args.threads) * 1e3:.1f} ms")
        return
    precisions = [False, True] if args.device.startswith("cuda") else [False]
    for preset in args.presets:
        for bf16 in precisions:
            r = _child("train_speed", dict(preset=preset, steps=args.steps, threads=args.threads,
                                           device=args.device, bf16=bf16, batch=args.batch, crop=args.crop))
            print("train", json.dumps(r), flush=True)
    if args.device.startswith("cuda"):
        for preset in args.presets:
            batch = args.largest_start or args.batch
            best = None
            while batch <= 4096:
                r = _child("train_speed", dict(preset=preset, steps=3, threads=args.threads, device=args.device,
                                               bf16=True, batch=batch, crop=args.crop))
                if "error" in r:
                    break
                best = r
                batch *= 2
            print("largest-batch", json.dumps(best), flush=True)
    if not args.skip_inference:
        _inference_rows(args)
        for tile in (None, 256):
            r = _child("infer_speed", dict(preset=args.infer_preset, size=args.big, threads=args.threads,
                                           device=args.device, method="direct", tile=tile, samples=1))
            print("infer-big", json.dumps(r), flush=True)
    print(f"# calibration after: {calibration(args.threads) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
