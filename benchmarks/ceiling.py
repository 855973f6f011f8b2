"""Supervised ceiling for the quality benchmark: the Direct Denoiser's U-Net trained on (noisy, clean)
pairs with MSE, on the same data, crops, batch and wall-clock budget as benchmarks/quality.py.

COSDD never sees clean images; its Direct Denoiser learns from the VAE's signal estimates. A U-Net of the
same size trained against the ground truth itself, for the same time, is an optimistic bound on what the
self-supervised Direct Denoiser can reach in that time (it also runs more steps, as it has no VAE to train).

    python benchmarks/ceiling.py --minutes 10
    python benchmarks/ceiling.py --minutes 10 --cell nuclei2d_none   # a cell of the real-data matrix

With `--cell` the data are that cell's 16 frames (benchmarks/realdata.py) and the first 6 are scored as
benchmarks/real_matrix.py scores them; training uses bf16 autocast where the CPU has it, as the
Trainer does, so the bound gets the same speed-up.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from napari_cosdd.engine import config as C
from napari_cosdd.engine.device import autocast, cpu_has_bf16, prepare_cpu
from napari_cosdd.engine.nets.direct_denoiser import DirectDenoiser
from napari_cosdd.synthetic import excess_row_autocorrelation, make_dataset, psnr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--preset", default=C.DEFAULT_PRESET_CPU)
    p.add_argument("--noise", default="stripes")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--eval-images", type=int, default=4)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", default="{}", help="JSON of ModelConfig fields")
    p.add_argument("--cell", default=None, help="IMAGE_NOISE of the real-data matrix instead of the stripes")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    prepare_cpu()
    bf16 = False
    if args.cell is None:
        noisy, clean = make_dataset(args.noise, n_images=args.images, shape=(args.size, args.size), seed=args.seed)
        score_frames = lambda c, e: float(np.mean([psnr(g, x) for g, x in zip(c, e)]))  # noqa: E731
    else:
        import realdata as R  # beside this script

        (image, noise), = R.parse_cells([args.cell])
        cell = R.make_cell(image, noise)
        noisy, clean = cell.noisy.astype(np.float32), cell.clean
        args.size, args.eval_images = noisy.shape[-1], R.EVAL_FRAMES
        score_frames = R.psnr_frames
        bf16 = cpu_has_bf16()
    mean, std = float(noisy.mean()), float(noisy.std())
    cfg = C.model_config_from_preset(args.preset, crop_size=args.crop, orientation="x",
                         **json.loads(args.override))
    net = DirectDenoiser(**DirectDenoiser.arguments(cfg))
    layout = torch.channels_last if args.cell is not None else torch.contiguous_format  # as the Trainer
    net = net.to(memory_format=layout)
    opt = torch.optim.Adamax(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    # Images 0..eval-1 are scored, as in quality.py; train on all, as COSDD does (it sees the noisy
    # versions of the scored images too).
    xs = torch.from_numpy((noisy - mean) / std).float()[:, None]
    ys = torch.from_numpy((clean - mean) / std).float()[:, None]
    rng = np.random.default_rng(args.seed)
    t0, step, running = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < args.minutes * 60:
        idx = rng.integers(0, len(xs), args.batch)
        r = rng.integers(0, args.size - args.crop + 1, (args.batch, 2))
        xb = torch.stack([xs[i, :, a:a + args.crop, b:b + args.crop] for i, (a, b) in zip(idx, r)])
        yb = torch.stack([ys[i, :, a:a + args.crop, b:b + args.crop] for i, (a, b) in zip(idx, r)])
        with autocast(torch.device("cpu"), False, bf16):
            out = net(xb.contiguous(memory_format=layout))
        loss = F.mse_loss(out.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        running.append(float(loss))
        step += 1
        if step % 50 == 0:
            sched.step(np.mean(running))
            print(f"step {step:5d} {time.perf_counter() - t0:6.0f}s  mse {np.mean(running):.5f}", flush=True)
            running = []
    net.eval()
    n = args.eval_images
    with torch.no_grad():
        out = net(xs[:n]).numpy()[:, 0] * std + mean
    base = score_frames(clean[:n], noisy[:n])
    score = score_frames(clean[:n], out)
    ac = excess_row_autocorrelation(out - clean[:n])
    print(f"\n# supervised {args.preset} {json.loads(args.override)} {args.cell or args.noise} "
          f"{'bf16' if bf16 else 'fp32'} steps {step} "
          f"{(time.perf_counter() - t0) / step:.3f} s/step")
    print(f"noisy input    PSNR {base:6.2f} dB")
    print(f"supervised     PSNR {score:6.2f} dB  ({score - base:+5.2f})  excess row autocorr lags 1-3: "
          + " ".join(f"{a:+.3f}" for a in ac))


if __name__ == "__main__":
    main()
