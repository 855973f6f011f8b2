"""The GPU tier: what only a CUDA machine can check. CI has no GPU, so there these report as skipped with
that reason; a session lent a GPU runs them there (benchmarks/gpu_session.sh) and records the result in
docs/benchmarks.md.

The promise under test: a model trained on a cluster GPU opens on a laptop's CPU and gives the same
output there, and the reverse; bf16 on the GPU changes the output by no more than its rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cosdd.engine.config import TrainConfig
from napari_cosdd.engine.inference import denoise
from napari_cosdd.engine.model_file import load_model, save_model
from napari_cosdd.engine.train import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run on a GPU machine")


def _close(a: np.ndarray, b: np.ndarray, share: float) -> float:
    """The largest difference as a share of the image's range; asserted under `share`."""
    spread = float(np.ptp(b)) or 1.0
    worst = float(np.abs(a - b).max()) / spread
    assert worst < share, f"outputs differ by {worst:.2%} of the range (allowed {share:.2%})"
    return worst


@pytest.fixture(scope="module")
def gpu_model(stripes_small):
    """A tiny model trained on the GPU with bf16 autocast (the path with the most to go wrong)."""
    noisy, _ = stripes_small
    trainer = Trainer(noisy, "SYX", preset="tiny", orientation="x",
                      train_config=TrainConfig(max_steps=60, val_every=20, crop_size=32, seed=0, device="cuda",
                                               bf16=True))
    events = list(trainer.fit())
    return trainer, events


def test_training_on_the_gpu_runs_there_and_hands_the_model_back_where_it_was(gpu_model):
    trainer, events = gpu_model
    assert trainer.steps_done == 60
    assert trainer.history[-1]["device"].startswith("cuda")
    # The Trainer built the model on the CPU; fit trains on the GPU and puts it back.
    assert all(p.device.type == "cpu" for p in trainer.model.parameters())
    steps = [e for e in events if e.kind == "step"]
    assert steps and all(np.isfinite(v) for e in steps for v in e.train.values())
    vals = [e for e in events if e.kind == "validation" and e.val]
    assert vals and all(np.isfinite(e.val["elbo"]) for e in vals)


def test_validation_after_gpu_training_runs_where_the_model_is(gpu_model):
    trainer, events = gpu_model
    best = [e.best_val for e in events if e.best_val is not None][-1]
    after = trainer.validate()  # on the CPU now, in fp32; during fit it ran on the GPU in bf16
    # The model holds the best weights, so the same crops give the best validation again, up to bf16.
    assert np.isfinite(after["elbo"])
    assert abs(after["elbo"] - best) < 0.05 * abs(best) + 0.02


def test_a_gpu_trained_model_opens_on_the_cpu_with_the_same_output(gpu_model, stripes_small, tmp_path):
    trainer, _ = gpu_model
    noisy, _ = stripes_small
    path = tmp_path / "gpu.cosdd"
    save_model(trainer.model, path)
    model = load_model(path)
    assert all(p.device.type == "cpu" for p in model.parameters())
    cpu = denoise(model, noisy[:2], "SYX", method="direct", device="cpu").direct
    gpu = denoise(model, noisy[:2], "SYX", method="direct", device="cuda", bf16=False).direct
    # fp32 on both sides; the GPU's convolutions may use TF32, so not bit for bit.
    _close(gpu, cpu, 0.01)
    assert all(p.device.type == "cpu" for p in model.parameters()), "denoising on the GPU moved the model"


def test_a_cpu_trained_model_runs_on_the_gpu_in_bf16_within_its_rounding(tiny_model, stripes_small):
    noisy, _ = stripes_small
    cpu = denoise(tiny_model, noisy[:2], "SYX", method="direct", device="cpu").direct
    bf16 = denoise(tiny_model, noisy[:2], "SYX", method="direct", device="cuda", bf16=True).direct
    _close(bf16, cpu, 0.05)
    assert next(tiny_model.parameters()).device.type == "cpu"


def test_seeded_sampling_on_the_gpu_repeats_and_has_spread(tiny_model, stripes_small):
    noisy, _ = stripes_small
    a = denoise(tiny_model, noisy[:1], "SYX", method="sample", n_samples=8, device="cuda", seed=5)
    b = denoise(tiny_model, noisy[:1], "SYX", method="sample", n_samples=8, device="cuda", seed=5)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert float(np.median(a.std)) > 0.0
