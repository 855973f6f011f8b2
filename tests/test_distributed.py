"""Training on two CPU processes (gloo) with DistributedDataParallel: weights in sync, one model file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from napari_cosdd.engine.config import TrainConfig
from napari_cosdd.engine.model_file import load_model
from napari_cosdd.synthetic import make_dataset

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One process of a 2-process run: train a few steps, then dump its weights and its first crops."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from napari_cosdd.engine import distributed
    from napari_cosdd.engine.train import Trainer

    ctx = distributed.init_from_env("cpu")
    noisy, _ = make_dataset("stripes", n_images=4, shape=(64, 64), seed=1)
    trainer = Trainer(noisy, "SYX", preset="tiny", orientation="x", dist_context=ctx,
                      train_config=TrainConfig(max_steps=6, val_every=3, crop_size=32, seed=0, device="cpu"))
    first_crops = trainer.sampler.batch(4).copy()
    trainer.sampler = type(trainer.sampler)(trainer.train_images, trainer.crop, 1000 * rank)  # same stream again
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    events = list(trainer.fit())
    torch.save({"state": trainer.model.state_dict(), "initial": initial, "crops": torch.from_numpy(first_crops),
                "val": [e.val for e in events if e.kind == "validation"], "steps": events[-1].step},
               os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.shutdown()


def test_two_gloo_processes_keep_identical_weights(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 6
    # Each process drew its own crops ...
    assert not torch.equal(r0["crops"], r1["crops"])
    # ... yet the weights are the same everywhere, and they did change.
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    changed = [k for k in r0["state"] if not torch.equal(r0["state"][k], r0["initial"][k])]
    assert len(changed) > len(r0["state"]) // 2
    # Validation losses were agreed, so both processes took the same decisions.
    assert r0["val"] == r1["val"] and len(r0["val"]) == 2


def test_torchrun_cli_writes_the_model_once(tmp_path):
    noisy, _ = make_dataset("stripes", n_images=3, shape=(64, 64), seed=4)
    np.save(tmp_path / "data.npy", noisy)
    out = tmp_path / "ddp.cosdd"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port", str(_free_port()),
         "-m", "napari_cosdd", "train", str(tmp_path / "data.npy"), "--axes", "SYX", "--out", str(out),
         "--preset", "tiny", "--steps", "4", "--val-every", "2", "--crop-size", "32", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("model written") == 1
    assert proc.stderr.count("training ended") == 1
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".cosdd", ".part")] == ["ddp.cosdd"]
    history = load_model(out).history[-1]
    assert history["steps"] == 4 and history["reason"] == "budget reached"
