"""Large inputs: peak memory and throughput of denoising against the input's size (issue #13.1).

    python benchmarks/big_data.py                                   # 0.25 and 1 GB, direct and 20 samples
    python benchmarks/big_data.py --sizes 0.25 1 4 16 --modes direct
    python benchmarks/big_data.py --sizes 0.25 1 --write-docs       # add the rows to the stored ones
                                                                    # (results/big_data_cpu.json), write the table

Each size is a synthetic uint16 time-lapse TIFF of 512 x 512 frames (stripes noise over smooth objects,
plus a camera offset) written to --data (default: a cache folder outside the repository; 16 GB needs
that much disk). Each measurement runs in a fresh process, so its peak resident memory (ru_maxrss) is its
own:

- stream: the command line's path. The TIFF is read page by page (never whole) and every finished frame
  is written into OME-Zarr outputs (--format ome-zarr); samples go to disk.
- memory: the whole TIFF read into a numpy array and the outputs returned as numpy arrays (the Python
  API's default), as a baseline for throughput; run only where the input and outputs fit in memory.

Throughput is input megapixels per second over the whole run (reading and writing included). The model
is the CPU's default preset with its initial weights (speed does not depend on the weights), or
--preset and --override. A light model (tiny, fewer features) makes reading and writing a larger share of
the time, so it is the stricter test of what streaming costs; on a 2-core CPU the 4 and 16 GB inputs,
and 20 samples of anything but small inputs, take hours and fit a GPU better.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import realdata as R

FRAME = 512
BEGIN, END = "<!-- big data: begin -->", "<!-- big data: end -->"
RESULTS = Path(__file__).resolve().parent / "results" / "big_data_cpu.json"  # every row measured so far
DATA = Path(os.environ.get("COSDD_BENCH_CACHE", Path.home() / ".cache" / "napari-cosdd" / "bench")) / "big"


def make_input(size_gb: float, folder: Path) -> Path:
    """A uint16 TYX time-lapse of about `size_gb` GB, written frame by frame (never whole in memory)."""
    import tifffile

    from napari_cosdd.synthetic import make_dataset

    n = max(1, round(size_gb * 1e9 / (2 * FRAME * FRAME)))
    path = folder / f"timelapse_{size_gb:g}GB.tif"
    if path.exists() and tifffile.TiffFile(path).series[0].shape == (n, FRAME, FRAME):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    noisy, _ = make_dataset("stripes", n_images=8, shape=(FRAME, FRAME), seed=0)
    counts = (100 + 1000 * np.clip(noisy, 0, None)).astype(np.uint16)

    def frames():
        for i in range(n):  # eight distinct frames, shifted so that no two frames are the same
            yield np.roll(counts[i % 8], i // 8, axis=1)

    tmp = path.with_name(path.name + ".part")
    tifffile.imwrite(tmp, data=frames(), shape=(n, FRAME, FRAME), dtype=np.uint16, bigtiff=True,
                     metadata={"axes": "TYX"}, photometric="minisblack")
    os.replace(tmp, path)
    return path


def measure(path: Path, mode: str, how: str, preset: str, threads: int, out: Path, override: dict) -> dict:
    """One run in this process: denoise `path`, return seconds, throughput and peak memory."""
    import shutil

    import torch

    from napari_cosdd.engine.config import model_config_from_preset
    import psutil

    from napari_cosdd.engine.inference import denoise_iter
    from napari_cosdd.engine.io import read_image
    from napari_cosdd.engine.nets.model import COSDD
    from napari_cosdd.engine.stores import ZarrOutputs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = COSDD(model_config_from_preset(preset, 64, orientation="x", **override))
    model.set_normalisation([600.0], [300.0])
    model.eval()
    kwargs = dict(method="direct") if mode == "direct" else dict(method="sample", n_samples=20, variance=True)
    t0 = time.perf_counter()
    image = read_image(path, lazy=how == "stream")
    if how == "memory":
        image.data = np.asarray(image.data)
    store = None
    if how == "stream":
        shutil.rmtree(out, ignore_errors=True)
        store = ZarrOutputs(out, path.stem)
    # The resident memory along the run: flat when nothing grows with the frames done.
    process = psutil.Process()
    trace = []
    gen = denoise_iter(model, image.data, "TYX", device="cpu", seed=0, out=store, **kwargs)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if ev.total and (not trace or ev.fraction >= trace[-1][0] + 0.1):
            trace.append((round(ev.fraction, 2), round(process.memory_info().rss / 1024**3, 3)))
    seconds = time.perf_counter() - t0
    pixels = int(np.prod(image.data.shape))
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if how == "stream" else 0
    shutil.rmtree(out, ignore_errors=True)
    del result
    return {"input_gb": round(path.stat().st_size / 1e9, 3), "frames": int(image.data.shape[0]), "mode": mode,
            "how": how, "seconds": round(seconds, 1), "mpx_per_s": round(pixels / seconds / 1e6, 3),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
            "written_gb": round(written / 1e9, 3), "preset": preset, "threads": threads,
            "override": override, "rss_trace_gb": trace, "date": time.strftime("%Y-%m-%d"),
            "machine": R.machine_name(platform), "commit": R.COMMIT_AT_START}


def run_one(args) -> None:
    print(json.dumps(measure(Path(args.input), args.mode, args.how, args.preset, args.threads, Path(args.out),
                             json.loads(args.override))))


def table(rows: list[dict]) -> str:
    lines = ["| input | frames | outputs | path | seconds | input Mpx/s | peak RSS (GB) | RSS at 10 % -> end of the "
             "run (GB) | written (GB) | commit |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        what = "direct" if r["mode"] == "direct" else "mean, variance, std of 20 samples"
        trace = r.get("rss_trace_gb") or [[0, float("nan")]]
        early = next((v for f, v in trace if f >= 0.1), trace[0][1])
        lines.append(f"| {r['input_gb']:.2f} GB | {r['frames']} | {what} | {r['how']} | {r['seconds']:.0f} | "
                     f"{r['mpx_per_s']:.3f} | {r['peak_rss_gb']:.2f} | {early:.2f} -> {trace[-1][1]:.2f} | "
                     f"{r['written_gb']:.2f} | {r.get('commit', 'before 23439b8')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0], help="input sizes in GB")
    p.add_argument("--modes", nargs="+", default=["direct", "samples"], choices=["direct", "samples"])
    p.add_argument("--memory-up-to", type=float, default=1.0,
                   help="also run the in-memory baseline for inputs up to this many GB")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--override", default="{}", help='JSON of ModelConfig fields, e.g. {"features": 8}')
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="runs of each, alternated; the fastest is kept")
    p.add_argument("--data", default=str(DATA), help="folder for the synthetic inputs and outputs")
    p.add_argument("--write-docs", action="store_true", help="put the table into docs/benchmarks.md")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--how", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return run_one(args)
    data = Path(args.data)
    rows = []
    for size in args.sizes:
        path = make_input(size, data)
        for mode in args.modes:
            hows = ["stream"] + (["memory"] if size <= args.memory_up_to else [])
            best: dict[str, dict] = {}
            for _ in range(args.repeats):  # alternated, the fastest of each kept: this CPU's speed drifts
                for how in hows:
                    cmd = [sys.executable, __file__, "--one", "--input", str(path), "--mode", mode, "--how", how,
                           "--preset", args.preset, "--threads", str(args.threads), "--out", str(data / "out"),
                           "--override", args.override]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(done.stderr[-2000:], file=sys.stderr)
                        raise SystemExit(f"{size} GB {mode} {how} failed")
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    print(json.dumps(row), flush=True)
                    if how not in best or row["seconds"] < best[how]["seconds"]:
                        best[how] = row
            rows.extend(best[h] for h in hows)
    with open(data / "big_data.json", "w") as f:
        json.dump(rows, f, indent=1)
    if args.write_docs:
        rows = merge_results(rows)
        R.write_into_docs(table(rows), BEGIN, END)
    print(table(rows))


def merge_results(rows: list[dict], path: Path = RESULTS) -> list[dict]:
    """Add this run's rows to the stored ones (a row measured again with the same settings replaces its
    old one), so that sessions can add sizes and modes to the table without running it all again."""
    def key(r: dict) -> tuple:
        return r["input_gb"], r["mode"], r["how"], r["preset"], json.dumps(r["override"], sort_keys=True)

    stored = json.loads(path.read_text()) if path.exists() else []
    merged = {key(r): r for r in stored}
    merged.update((key(r), r) for r in rows)
    order = {"direct": 0, "samples": 1, "stream": 0, "memory": 1}
    out = sorted(merged.values(), key=lambda r: (r["mode"] != "direct", r["input_gb"], order[r["how"]]))
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
