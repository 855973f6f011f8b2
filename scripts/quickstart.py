"""Train COSDD on built-in synthetic stripes data, denoise, write TIFFs and print PSNR.

    python scripts/quickstart.py --minutes 1 --out quickstart_out

Uses only the engine's Python API (the command line comes with the next release).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile

from napari_cosdd.engine.config import TrainConfig
from napari_cosdd.engine.inference import denoise
from napari_cosdd.engine.model_file import save_model
from napari_cosdd.engine.synthetic import make_dataset, psnr
from napari_cosdd.engine.train import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=1.0, help="training budget (default 1)")
    p.add_argument("--preset", default=None, help="network size: tiny, cpu, small, default, large (default: cpu on a CPU, large on a GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="quickstart_out", help="folder for the TIFFs and the model")
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    noisy, clean = make_dataset("stripes", n_images=8, shape=(128, 128), seed=0)
    trainer = Trainer(noisy, "SYX", preset=args.preset, orientation="x",
                      train_config=TrainConfig(max_minutes=args.minutes, max_steps=None, device=args.device))
    for ev in trainer.fit():
        if ev.kind in ("start", "validation", "done", "warning"):
            val = f"val ELBO {ev.val['elbo']:.4f}" if ev.val else ""
            print(f"[{ev.kind:10s}] step {ev.step:5d}  {ev.elapsed:5.0f}s  {val}  {ev.message}", flush=True)
    save_model(trainer.model, out / "stripes.cosdd")

    test_noisy, test_clean = make_dataset("stripes", n_images=2, shape=(256, 256), seed=100)
    direct = denoise(trainer.model, test_noisy, "SYX", method="direct").direct
    sampled = denoise(trainer.model, test_noisy, "SYX", method="sample", n_samples=20)
    for name, arr in [("noisy", test_noisy), ("clean", test_clean), ("direct", direct),
                      ("mean20", sampled.mean), ("std20", sampled.std)]:
        tifffile.imwrite(out / f"{name}.tif", arr.astype(np.float32), imagej=True, metadata={"axes": "TYX"})

    def score(est):
        return np.mean([psnr(c, e) for c, e in zip(test_clean, est)])

    print(f"PSNR noisy {score(test_noisy):.2f} dB | direct {score(direct):.2f} dB | "
          f"mean of 20 samples {score(sampled.mean):.2f} dB  (TIFFs and model in {out}/)")


if __name__ == "__main__":
    main()
