"""Run structured Noise2Void (CAREamics) on cells of the real-data matrix: the peer users already know.

CAREamics is not a dependency of this project. Install it into an environment of its own that sees the
system's CPU torch 2.13.0. CAREamics 0.3.5 requires torchvision up to 0.26, which pins torch 2.11, so
pip brings CUDA builds of both (several GB) even with the CPU torch installed; remove them again, and
the system's CPU torch shows through (the figures in docs/benchmarks.md were made that way):

    python -m venv --system-site-packages n2venv
    n2venv/bin/pip install careamics==0.3.5
    n2venv/bin/pip uninstall -y torch torchvision triton $(n2venv/bin/pip list | grep -oE '^(nvidia|cuda)-[^ ]*')
    n2venv/bin/python -c "import torch; print(torch.__version__)"      # 2.13.0+cpu
    n2venv/bin/python benchmarks/structn2v_careamics.py --cells nuclei2d_camera moon_x --minutes 10

Same data, budget and scoring as ours and the reference: the 16 noisy frames of the cell (uint16 counts
with the camera offset, normalised by CAREamics' own mean/std), 10 minutes on 2 threads, the first 6
frames denoised whole and scored by PSNR against the clean frames. N2V has one output (no samples), so
it fills the "direct" column. The structN2V mask follows the noise's true correlation: horizontal for
row stripes and the camera's row noise, vertical for column stripes, none (plain N2V) for
pixel-independent noise. Its span is 15 pixels, the longest CAREamics allows, because the noise
autocorrelation of the striped cells is 0.22 at 4 pixels and 0.09 at 7 (moon x: stripes blurred with a
sigma of 3 pixels), so a user who looks at it would cover 7 pixels each side; CAREamics' factory default
is 5. The camera's per-row offsets keep its autocorrelation near 0.2 along the whole row (0.18 at 15
pixels on nuclei2d camera), which no structN2V mask covers. CAREamics'
other defaults (U-Net of depth 2 with 32 features, Adam at torch's default rate, ReduceLROnPlateau,
0.2 % of the pixels of a 64-px patch masked, flips and rotations for plain N2V and none for structN2V)
stay as they are, with batch 16; it keeps the last weights, as its predict does for N2V.

CAREamics 0.3.5 imports torchvision at import time for its hierarchical-VAE code only. Where no
torchvision that matches the CPU torch can be installed (its PyPI wheels are CUDA builds), this script
stands an empty `torchvision` module in for it and says so; the N2V path never calls torchvision.
One JSON file per cell goes to benchmarks/results/structn2v/ (or the folder that --tag names).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import sys
import tempfile
import time
import types

import numpy as np
import torch

import realdata as R

METHOD = "structn2v"
MASK = {"x": "horizontal", "camera": "horizontal", "y": "vertical", "none": "none"}


def _torchvision_stand_in() -> str:
    """Import torchvision, or put an empty stand-in in its place; returns what was used. Lightning and
    torchmetrics are imported first, so that they see no torchvision and never reach into the stand-in."""
    import lightning.pytorch  # noqa: F401
    import torchmetrics  # noqa: F401

    try:
        import torchvision

        return f"torchvision {torchvision.__version__}"
    except Exception as exc:   # noqa: BLE001 - any failure to load the compiled ops means the same here
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        package = _empty_module("torchvision", package=True)
        package.__version__ = "unavailable"
        transforms = _empty_module("torchvision.transforms", package=True)
        functional = _empty_module("torchvision.transforms.functional")
        transforms.functional = functional
        package.transforms = transforms
        sys.modules.update({"torchvision": package, "torchvision.transforms": transforms,
                            "torchvision.transforms.functional": functional})
        print(f"torchvision could not be loaded ({type(exc).__name__}: {exc}); an empty stand-in is used "
              "(CAREamics' N2V does not call it)", flush=True)
        return f"stand-in ({type(exc).__name__})"


def _empty_module(name: str, package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    return module


def check_masks(span: int) -> None:
    """Print, for each structN2V orientation, which pixels CAREamics changes around one masked pixel of a
    ramp patch: the line of `span` pixels must lie along X for horizontal and along Y for vertical."""
    _load_careamics()
    from careamics.config.algorithms.n2v_manipulation import StructMaskConfig
    from careamics.lightning.modules.n2v_utils.pixel_manipulation import uniform_manipulate

    ramp = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 64, 64)
    for axes in ("horizontal", "vertical"):
        out, mask = uniform_manipulate(ramp.clone(), 0.2, struct_params=StructMaskConfig(axes=axes, span=span),
                                       rng=torch.Generator().manual_seed(1))
        changed = (out != ramp)[0].int()
        ys, xs = torch.where(mask[0] == 1)
        y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
        h = span // 2 + 1
        print(f"{axes}: pixel ({y}, {x}); changed along X {changed[y, x - h:x + h + 1].tolist()}, "
              f"along Y {changed[y - h:y + h + 1, x].tolist()}")


def run_cell(cell: R.Cell, minutes: float, threads: int, seed: int, batch: int, span: int,
             versions: dict) -> dict:
    from careamics import CAREamist
    from careamics.config.factories.n2v_factory import create_advanced_n2v_config
    from lightning.pytorch import Callback

    class StepCounter(Callback):
        """Counts optimiser steps and keeps the validation loss after each epoch."""

        def __init__(self):
            self.steps, self.val_log = 0, []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.steps += 1

        def on_validation_epoch_end(self, trainer, pl_module):
            loss = trainer.callback_metrics.get("val_loss")
            if loss is not None:
                self.val_log.append({"steps": self.steps, "val_loss": float(loss)})

    torch.set_num_threads(threads)
    mask = MASK[cell.noise]
    config = create_advanced_n2v_config(
        experiment_name=f"bench_{cell.name}".replace("-", "_"), data_type="array", axes="SYX",
        patch_size=[64, 64], batch_size=batch, num_epochs=100000,
        augmentations=[] if mask != "none" else None,
        struct_n2v_axes=mask, struct_n2v_span=span, num_workers=0, seed=seed,
        trainer_params={"max_time": {"minutes": minutes}, "accelerator": "cpu", "devices": 1,
                        "precision": "32-true"},
    )
    counter = StepCounter()
    noisy = cell.noisy.astype(np.float32)
    with tempfile.TemporaryDirectory() as work_dir:
        careamist = CAREamist(config, work_dir=work_dir, callbacks=[counter], enable_progress_bar=False)
        t0 = time.perf_counter()
        careamist.train(train_data=noisy)
        seconds = time.perf_counter() - t0
        for entry in counter.val_log[:: max(1, len(counter.val_log) // 12)]:
            print(f"  steps {entry['steps']:5d}  val loss {entry['val_loss']:.4f}", flush=True)
        predictions, _ = careamist.predict(noisy[:R.EVAL_FRAMES], data_type="array", axes="SYX", batch_size=1)
    direct = np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, R.SIZE, R.SIZE) for p in predictions])
    if direct.shape[0] != R.EVAL_FRAMES:
        raise RuntimeError(f"CAREamics returned {direct.shape[0]} predictions for {R.EVAL_FRAMES} frames")
    clean = cell.clean[:R.EVAL_FRAMES]
    # A constant shift of the whole output costs PSNR that no texture explains: stored apart, so that a
    # weak cell shows whether N2V misses the level or the structure.
    offset = (direct - clean).mean(axis=(1, 2), keepdims=True)
    return {
        "psnr": {
            "noisy": R.psnr_frames(clean, noisy[:R.EVAL_FRAMES]),
            "direct": R.psnr_frames(clean, direct),
        },
        "direct_offset_counts": float(offset.mean()),
        "psnr_direct_offset_removed": R.psnr_frames(clean, direct - offset),
        "steps": counter.steps,
        "seconds": round(seconds, 1),
        "orientation": R.TRUE_ORIENTATION[cell.noise],
        "settings": {"method": "structN2V" if mask != "none" else "N2V", "mask": mask,
                     "span": span if mask != "none" else None,
                     "patch": 64, "batch": batch, **versions, "minutes": minutes, "threads": threads,
                     "seed": seed},
        "val_log": counter.val_log,
    }


def _load_careamics() -> dict:
    """Import CAREamics once per process (behind the torchvision stand-in where one is needed); the versions
    that every result records."""
    torchvision_used = _torchvision_stand_in()
    import careamics

    return {"careamics": careamics.__version__, "torchvision": torchvision_used}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", help="IMAGE_NOISE, e.g. nuclei2d_camera; or 'all'")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1, help="CAREamics takes seeds from 1")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--span", type=int, default=15, help="length of the structN2V mask (odd, 3-15)")
    p.add_argument("--rerun", action="store_true", help="run cells that already have a result")
    p.add_argument("--tag", default=METHOD, help="results folder under benchmarks/results/ (another seed goes "
                   "in a folder of its own, so the peers table keeps the first run)")
    p.add_argument("--check-masks", action="store_true", help="only print where each structN2V mask falls")
    args = p.parse_args()
    if args.check_masks:
        return check_masks(args.span)
    if not args.cells:
        p.error("--cells is required (or --check-masks)")
    versions = None
    for image, noise in R.parse_cells(args.cells):
        if not args.rerun and R.has_result(args.tag, image, noise):
            print(f"{image}_{noise}: already measured, skipped (--rerun to measure again)")
            continue
        cell = R.make_cell(image, noise)
        print(f"{cell.name}: CAREamics {MASK[noise]} mask, {args.minutes:g} min", flush=True)
        versions = versions or _load_careamics()
        result = run_cell(cell, args.minutes, args.threads, args.seed, args.batch, args.span, versions)
        path = R.write_result(args.tag, cell, result)
        print(f"{cell.name}: " + "  ".join(f"{k} {v:.2f}" for k, v in result["psnr"].items())
              + f"  steps {result['steps']}  -> {path}", flush=True)


if __name__ == "__main__":
    main()
