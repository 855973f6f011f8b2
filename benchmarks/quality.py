"""Quality benchmark: train on synthetic stripes for a wall-clock budget, report PSNR and the row
correlation left in the error for the noisy input, 1 sample, the mean of 10 and 100 samples, and direct.

    python benchmarks/quality.py --minutes 10                # the default CPU setup
    python benchmarks/quality.py --minutes 2 --preset tiny   # quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

import realdata as R

from napari_cosdd.engine import config as C
from napari_cosdd.engine.inference import denoise
from napari_cosdd.engine.model_file import load_model, save_model
from napari_cosdd.synthetic import excess_row_autocorrelation, make_dataset, psnr
from napari_cosdd.engine.train import Trainer


def _train(args, noisy, cfg):
    """Train as the arguments say, printing each validation; the model, its steps and seconds."""
    if args.resume:
        trainer = Trainer(noisy, "SYX", model=load_model(args.resume), train_config=cfg)
    else:
        trainer = Trainer(noisy, "SYX", preset=args.preset, orientation="x", train_config=cfg,
                          **json.loads(args.override))
    t0 = time.perf_counter()
    for ev in trainer.fit():
        if ev.kind in ("validation", "done"):
            val = ev.val or {}
            print(f"step {ev.step:5d}  {ev.elapsed:6.0f}s  lr {ev.lr:.1e}  "
                  f"val elbo {val.get('elbo', float('nan')):.4f}  "
                  f"kl {val.get('kl', float('nan')):.4f}  signal {val.get('signal', float('nan')):.4f}  "
                  f"direct {val.get('direct', float('nan')):.4f}", flush=True)
    train_s = time.perf_counter() - t0
    model = trainer.model
    if args.save:
        save_model(model, args.save)
    return model, trainer.steps_done, train_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--preset", default=C.DEFAULT_PRESET_CPU)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--eval-images", type=int, default=4, help="images scored (the first ones)")
    p.add_argument("--samples", type=int, nargs="*", default=[1, 10, 100])
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the engine's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", default="{}", help='JSON of ModelConfig fields, e.g. {"features": 32}')
    p.add_argument("--train-override", default="{}", help='JSON of TrainConfig fields, e.g. {"lr_patience": 50}')
    p.add_argument("--save", default=None, help="write the trained model here")
    p.add_argument("--resume", default=None, help="continue training this model file")
    p.add_argument("--evaluate", default=None, help="score this model file without training")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    noisy, clean = make_dataset("stripes", n_images=args.images, shape=(args.size, args.size), seed=args.seed)
    settings = dict(max_minutes=args.minutes, max_steps=args.steps, crop_size=args.crop,
                    batch_size=args.batch, seed=args.seed, threads=args.threads, device="cpu")
    if args.lr is not None:
        settings["learning_rate"] = args.lr
    settings.update(json.loads(args.train_override))
    cfg = C.TrainConfig(**settings)
    if args.evaluate:
        model = load_model(args.evaluate)
        steps, train_s = sum(h.get("steps", 0) for h in model.history), 0.0
    else:
        model, steps, train_s = _train(args, noisy, cfg)
    n = args.eval_images
    x, gt = noisy[:n], clean[:n]
    rows = [("noisy input", x)]
    direct = denoise(model, x, "SYX", method="direct", device="cpu").direct
    rows.append(("direct", direct))
    for k in args.samples:
        res = denoise(model, x, "SYX", method="sample", n_samples=k, variance=False, device="cpu", seed=1)
        rows.append(("1 sample" if k == 1 else f"mean of {k}", res.mean))
    print(f"\n# {args.preset} {json.loads(args.override)} {cfg.optimizer} lr {cfg.learning_rate:g}  "
          f"steps {steps}  train {train_s:.0f}s  "
          f"{train_s / max(steps, 1):.3f} s/step  machine {R.machine_name(platform)}"
          f" threads {args.threads}")
    base = None
    for name, est in rows:
        score = float(np.mean([psnr(g, e) for g, e in zip(gt, est)]))
        base = score if base is None else base
        ac = excess_row_autocorrelation(est - gt)
        print(f"{name:14s} PSNR {score:7.3f} dB  ({score - base:+6.3f})  excess row autocorr of the error "
              "(row - column), lags 1-3: " + " ".join(f"{a:+.3f}" for a in ac))


if __name__ == "__main__":
    main()
