"""Run the authors' reference COSDD (krulllab/COSDD) on cells of the real-data matrix, same data and budget.

The reference is not part of this project and none of its code is copied here: fetch it into a folder
outside the repository, then point this script at that folder. It needs PyTorch Lightning, scikit-learn,
matplotlib and PyYAML (the reference imports them), best in a virtual environment of its own:

    python -m venv --system-site-packages refenv
    refenv/bin/pip install pytorch_lightning scikit-learn matplotlib pyyaml
    refenv/bin/python benchmarks/reference_cosdd.py --ref-dir /path/to/COSDD --cells nuclei2d_camera moon_x

Its `small` model (6 levels, 64 features, 3 Gaussians) trains as its training script would, with these
differences for a CPU and an equal budget: Lightning on the CPU in fp32 (on a GPU, `--device cuda`, in
bf16-mixed as its example config has it), no activation checkpointing,
gradient accumulation 1 (so it makes as many updates as it manages), 64-px crops and batch 4 (as ours),
and the time limit of the cell. Its early stopping (50 epochs) and plateau rule (25 epochs) stay as they
are. The orientation is the true one of the noise. Like the reference, it keeps the last weights.

Scored as ours: 1 sample, the mean of 20 and the Direct Denoiser on the first 6 frames, whole frames,
PSNR against the clean frames. One JSON file per cell goes to benchmarks/results/reference/.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import realdata as R


def _import_reference(ref_dir: str):
    sys.path.insert(0, ref_dir)
    from models.get_models import get_models
    from models.hub import Hub

    import utils as ref_utils

    class BenchHub(Hub):
        """The reference's Hub, counting its steps and keeping its validation log; no TensorBoard images."""

        def log_val_images(self, *args, **kwargs):
            pass

        def training_step(self, batch, batch_idx):
            self.steps_done = getattr(self, "steps_done", 0) + 1
            return super().training_step(batch, batch_idx)

        def on_train_epoch_end(self):
            metrics = self.trainer.callback_metrics
            self.val_log = getattr(self, "val_log", [])
            self.val_log.append({k: float(metrics[k]) for k in ("elbo/val", "kl_div/val", "sd_loss/val")
                                 if k in metrics} | {"steps": self.steps_done})
            super().on_train_epoch_end()

    return get_models, BenchHub, ref_utils


def run_cell(ref_dir: str, cell: R.Cell, minutes: float, threads: int, seed: int, device: str = "cpu") -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping

    get_models, BenchHub, ref_utils = _import_reference(ref_dir)
    torch.set_num_threads(threads)
    pl.seed_everything(seed, verbose=False)
    orientation = R.TRUE_ORIENTATION[cell.noise]
    cfg = {
        "data": {"number-dimensions": 2},
        "train-parameters": {"crop-size": [64, 64], "use-direct-denoiser": True,
                             "direct-denoiser-loss": "MSE"},
        "hyper-parameters": {"s-code-channels": 64, "number-layers": 6, "scale-initialisation": False,
                             "noise-direction": orientation, "number-gaussians": 3},
    }
    low_snr = torch.from_numpy(cell.noisy.astype(np.float32))[:, None]
    datamodule = ref_utils.DataModule(low_snr=low_snr, batch_size=4, rand_crop_size=[64, 64], train_split=0.9)
    lvae, ar_decoder, s_decoder, direct_denoiser = get_models(cfg, 1)
    mean = low_snr.mean([0, 2, 3], keepdim=True)
    std = low_snr.std([0, 2, 3], keepdim=True)
    hub = BenchHub(vae=lvae, ar_decoder=ar_decoder, s_decoder=s_decoder, direct_denoiser=direct_denoiser,
                   data_mean=mean, data_std=std, n_grad_batches=1, checkpointed=False)
    on_gpu = device.startswith("cuda")
    trainer = pl.Trainer(accelerator="gpu" if on_gpu else "cpu",
                         devices=[torch.device(device).index or 0] if on_gpu else 1,
                         max_epochs=1000, max_time={"minutes": minutes},
                         callbacks=[EarlyStopping(patience=50, monitor="elbo/val")], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         precision="bf16-mixed" if on_gpu else "32-true",
                         enable_model_summary=False)
    t0 = time.perf_counter()
    trainer.fit(hub, datamodule=datamodule)
    seconds = time.perf_counter() - t0
    for entry in getattr(hub, "val_log", []):
        print(f"  steps {entry['steps']:5d}  val elbo {entry.get('elbo/val', float('nan')):.4f}  "
              f"kl {entry.get('kl_div/val', float('nan')):.4f}  signal {entry.get('sd_loss/val', float('nan')):.4f}",
              flush=True)

    dev = torch.device(device)
    hub.to(dev).eval()
    mean, std = mean.to(dev), std.to(dev)
    x = (torch.from_numpy(cell.noisy[:R.EVAL_FRAMES].astype(np.float32))[:, None].to(dev) - mean) / std
    with torch.no_grad():
        torch.manual_seed(1)
        samples = []
        for _ in range(20):
            samples.append(hub.s_decoder(hub.vae(x)["s_code"]) * std + mean)
        samples = torch.stack(samples)[:, :, 0].cpu().numpy()
        direct = (hub.direct_denoiser(x) * std + mean)[:, 0].cpu().numpy()
        # KL per level on 64-px crops (the reference's top prior has the training crop's size).
        crops = x[..., :64, :64]
        out = hub.vae(crops)
        kl_levels = [float(ref_kl(q, p).sum() / crops.numel()) for q, p in zip(out["q_list"], out["p_list"])]
    clean = cell.clean[:R.EVAL_FRAMES]
    return {
        "psnr": {
            "noisy": R.psnr_frames(clean, cell.noisy[:R.EVAL_FRAMES].astype(np.float32)),
            "sample": R.psnr_frames(clean, samples[0]),
            "mean20": R.psnr_frames(clean, samples.mean(0)),
            "direct": R.psnr_frames(clean, direct),
        },
        # Top level first, as the reference lists them; reversed to bottom-first like ours.
        "kl_per_level": kl_levels[::-1],
        "steps": int(getattr(hub, "steps_done", 0)),
        "seconds": round(seconds, 1),
        "orientation": orientation,
        "settings": {"model": "small: 6 levels, 64 features, 3 Gaussians", "crop": 64, "batch": 4,
                     "grad_batches": 1, "optimizer": "Adamax (reference default lr)",
                     "precision": "bf16-mixed" if on_gpu else "fp32",
                     "device": R.device_name(device),
                     "minutes": minutes, "threads": threads, "seed": seed},
        "val_log": getattr(hub, "val_log", []),
    }


def ref_kl(q, p):
    """KL(q || p) between the reference's diagonal Gaussians, element-wise."""
    var_ratio = (q["std"] / p["std"]) ** 2
    return 0.5 * (var_ratio + (q["mu"] - p["mu"]) ** 2 / p["std"] ** 2 - 1) - torch.log(q["std"] / p["std"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref-dir", required=True, help="folder holding the reference's models/ and utils.py")
    p.add_argument("--cells", nargs="+", required=True, help="IMAGE_NOISE, e.g. nuclei2d_camera; or 'all'")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rerun", action="store_true", help="run cells that already have a result")
    p.add_argument("--device", default="cpu", help="cpu (the matrix's judge), cuda or cuda:N")
    p.add_argument("--tag", default="reference",
                   help="folder under benchmarks/results (default: reference; another keeps short runs apart)")
    args = p.parse_args()
    for image, noise in R.parse_cells(args.cells):
        if not args.rerun and R.has_result(args.tag, image, noise):
            print(f"{image}_{noise}: already measured, skipped (--rerun to measure again)")
            continue
        cell = R.make_cell(image, noise)
        print(f"{cell.name}: reference small, {args.minutes:g} min", flush=True)
        result = run_cell(args.ref_dir, cell, args.minutes, args.threads, args.seed, args.device)
        path = R.write_result(args.tag, cell, result)
        print(f"{cell.name}: " + "  ".join(f"{k} {v:.2f}" for k, v in result["psnr"].items())
              + f"  steps {result['steps']}  -> {path}", flush=True)


if __name__ == "__main__":
    main()
