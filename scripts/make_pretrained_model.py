"""Train the pretrained stripes model shipped with napari-cosdd, on a CPU, and report how well it denoises.

The plugin ships one small model so that a user can denoise the stripes sample at once, without first
training for minutes. This script records how that model was made, so anyone can remake it. It trains
on images drawn exactly as `napari_cosdd._sample_data.stripes_sample` draws its image, with other
seeds, and scores the model on the sample itself, which it never saw.

Usage::

    python scripts/make_pretrained_model.py [--minutes 8] [--out src/napari_cosdd/pretrained/stripes.cosdd]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_cosdd._sample_data import SAMPLE_SEEDS, make_sample, stripes_sample
from napari_cosdd.engine.config import TrainConfig
from napari_cosdd.engine.inference import denoise
from napari_cosdd.engine.model_file import save_model
from napari_cosdd.synthetic import psnr
from napari_cosdd.engine.train import Trainer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "napari_cosdd" / "pretrained" / "stripes.cosdd"
# Training images get seeds from here on; the samples use seeds below 100.
FIRST_TRAIN_SEED = 1000


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options.

    Parameters
    ----------
    argv : list of str, optional
        Arguments; ``sys.argv[1:]`` when None.

    Returns
    -------
    argparse.Namespace
        ``minutes``, ``out``, ``preset``, ``images`` and ``size``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training time budget (default 8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model file to write (default {DEFAULT_OUT})")
    parser.add_argument("--preset", default="cpu", help="network size preset (default cpu)")
    parser.add_argument("--images", type=int, default=8, help="number of training images (default 8)")
    parser.add_argument("--size", type=int, default=512, help="side of each training image (default 512)")
    return parser.parse_args(argv)


def training_images(n: int, size: int) -> np.ndarray:
    """Noisy stripes images made like the stripes sample, none with the sample's seeds.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Side of each square image.

    Returns
    -------
    numpy.ndarray
        float32 stack of shape ``(n, size, size)``.
    """
    held_out = {seed for pair in SAMPLE_SEEDS.values() for seed in pair}
    stack = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        image_seed, noise_seed = FIRST_TRAIN_SEED + 2 * i, FIRST_TRAIN_SEED + 2 * i + 1
        assert image_seed not in held_out and noise_seed not in held_out
        stack[i] = make_sample("stripes", (size, size), image_seed, noise_seed)[0]
    return stack


def main(argv=None) -> int:
    """Train, save, then print the file size and the PSNR on the held-out stripes sample.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    int
        Exit status, 0.
    """
    args = parse_args(argv)
    noisy_train = training_images(args.images, args.size)
    print(f"training data: {args.images} stripes images of {args.size}x{args.size} "
          f"(seeds from {FIRST_TRAIN_SEED}; the sample's seeds are held out)", flush=True)
    config = TrainConfig(max_minutes=args.minutes, max_steps=None, device="cpu", threads=2, seed=0)
    trainer = Trainer(noisy_train, "SYX", preset=args.preset, orientation="x", train_config=config)
    for ev in trainer.fit():
        if ev.kind == "start":
            print(f"start: {ev.message}", flush=True)
        elif ev.kind == "validation":
            print(f"step {ev.step:5d}  {ev.elapsed / 60:5.2f} min  train elbo {ev.train.get('elbo', float('nan')):8.4f}"
                  f"  val elbo {ev.val['elbo']:8.4f}  best {ev.best_val:8.4f}  lr {ev.lr:.1e}", flush=True)
        elif ev.kind == "warning":
            print(f"warning: {ev.message}", flush=True)
        elif ev.kind == "done":
            print(f"done: {ev.message}", flush=True)
    model = trainer.model
    run = model.history[-1]
    print(f"trained {run['steps']} steps in {run['seconds'] / 60:.2f} min, best val elbo {run['best_val_elbo']:.4f}")

    # Only for denoising: the optimiser state (to resume training) would triple the wheel's model file.
    out = save_model(model, args.out, training_state=False,
                     extra={"trained_on": "synthetic stripes, napari_cosdd._sample_data",
                            "script": "scripts/make_pretrained_model.py"})
    size_mb = out.stat().st_size / 2**20
    print(f"saved {out} ({out.stat().st_size} bytes, {size_mb:.2f} MiB)")

    # Pick the layers by their metadata, not their order (the ground truth comes first, so that napari
    # puts the noisy layer on top).
    layers = {bool(kwargs["metadata"].get("ground_truth")): data for data, kwargs, _ in stripes_sample()}
    noisy, clean = layers[False], layers[True]
    start = time.perf_counter()
    direct = denoise(model, noisy, "YX", method="direct", device="cpu").direct
    seconds = time.perf_counter() - start
    print(f"stripes sample (held out), PSNR: noisy {psnr(clean, noisy):.2f} dB, direct {psnr(clean, direct):.2f} dB")
    print(f"direct denoising of the {noisy.shape[0]}x{noisy.shape[1]} sample took {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
