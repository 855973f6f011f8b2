"""Shared fixtures: small synthetic data and one quickly trained tiny model for the whole session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cosdd.engine.config import TrainConfig
from napari_cosdd.synthetic import make_dataset
from napari_cosdd.engine.train import Trainer


@pytest.fixture(autouse=True)
def _cpu_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def stripes_small():
    """Eight 96x96 stripes-noise images and their clean versions."""
    return make_dataset("stripes", n_images=8, shape=(96, 96), seed=3)


@pytest.fixture(scope="session")
def tiny_model(stripes_small):
    """A tiny model trained for a few seconds: enough for shapes, files and widgets, not for quality."""
    noisy, _ = stripes_small
    trainer = Trainer(noisy, "SYX", preset="tiny", orientation="x",
                      train_config=TrainConfig(max_steps=30, val_every=10, crop_size=32, seed=0, device="cpu"))
    for _ in trainer.fit():
        pass
    return trainer.model


@pytest.fixture(scope="session")
def stripes_cpu_model():
    """The CPU default preset trained 300 steps (about 100 s) on stripes: a model that really denoises,
    for the outcome tests."""
    torch.manual_seed(0)
    noisy, _ = make_dataset("stripes", n_images=8, shape=(128, 128), seed=11)
    trainer = Trainer(noisy, "SYX", preset="cpu", orientation="x",
                      train_config=TrainConfig(max_steps=300, val_every=100, crop_size=64, seed=0, device="cpu"))
    for _ in trainer.fit():
        pass
    return trainer.model


@pytest.fixture
def collapsed_latents(monkeypatch):
    """Every loss computation reports a zero KL, as a collapsed posterior (equal to the prior) would."""
    from napari_cosdd.engine.nets.model import COSDD

    original = COSDD.losses

    def collapsed(self, x, direct=True):
        out = original(self, x, direct)
        out["kl"] = out["kl"] * 0.0
        return out

    monkeypatch.setattr(COSDD, "losses", collapsed)


def make_stripes(n=4, size=64, seed=0):
    noisy, clean = make_dataset("stripes", n_images=n, shape=(size, size), seed=seed)
    return noisy.astype(np.float32), clean
