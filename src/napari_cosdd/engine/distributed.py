"""Training on several processes (GPUs, or CPU processes for tests) with DistributedDataParallel.

Launched by torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK. Every process holds the whole model
and samples its own crops; DDP averages the gradients, so the weights stay identical. Every decision
that ends or skips a step (time budget, stop request, non-finite loss, validation, early stopping) is
agreed between the processes, otherwise one would wait forever for the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class DistContext:
    """This process's place in a distributed run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, *flags: bool) -> list[bool]:
        """For each flag, whether it is set on any process (one all-reduce for all of them)."""
        return [bool(v) for v in self.max(*flags)]

    def max(self, *values: float) -> list[float]:
        """For each value, its largest over the processes (one all-reduce for all of them)."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The average of each value over the processes (the same dict everywhere afterwards)."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return {k: v / self.world_size for k, v in zip(keys, t.tolist())}

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm running statistics) to every process. DDP syncs them only at
        the start of each forward, so after a step each process holds the statistics of its own crops."""
        self.broadcast_tensors(module.buffers())

    def broadcast_tensors(self, tensors) -> None:
        """Overwrite each tensor, in place, with rank 0's values."""
        for t in tensors:
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
                staged = t.to(self._comm_device)
                dist.broadcast(staged, src=0)
                t.copy_(staged)

    def barrier(self) -> None:
        dist.barrier()


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group torchrun set up: NCCL on CUDA, gloo on the CPU."""
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class LossModule(nn.Module):
    """The model's training losses as a forward pass, which is what DDP wraps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, direct: bool = True) -> dict[str, torch.Tensor]:
        return self.model.losses(x, direct)


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around the losses; it also copies rank 0's weights to every process at the start."""
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(LossModule(model), device_ids=ids)
