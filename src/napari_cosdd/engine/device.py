"""Choosing where to compute: CUDA, then Apple MPS, then CPU; and what is available, for the GUI."""

from __future__ import annotations

import contextlib
import functools

import torch


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; any other name must be available here."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA GPU is available to PyTorch here; use device 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"there is no GPU {device.index}; {torch.cuda.device_count()} found")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("Apple MPS is not available here; use device 'auto' or 'cpu'")
    return device


def available_devices() -> list[tuple[str, str]]:
    """(name, description) for each device PyTorch can use here, best first."""
    found = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append((f"cuda:{i}", f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append(("mps", "Apple GPU (MPS)"))
    found.append(("cpu", f"CPU ({torch.get_num_threads()} threads)"))
    return found


def autocast(device: torch.device, bf16: bool, cpu_bf16: bool = False):
    """bf16 autocast on CUDA when asked (bf16), on a CPU when asked (cpu_bf16) and the CPU has bf16
    instructions; fp32 everywhere else."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_bf16 and device.type == "cpu" and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (x86 AVX-512 BF16 or AMX). Elsewhere bf16 autocast is
    emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def prepare_cpu() -> bool:
    """Flush denormal floats to zero on the CPU, in the calling thread; returns whether they were
    flushed before, so the caller can put it back (``torch.set_flush_denormal(before)``).

    As training goes on, many activations and gradients become denormal; x86 CPUs handle those in
    microcode, which made training steps up to 3x slower here. Flushing them changes no result that
    matters (values below 1e-38). The flag lives in each thread's floating-point control register, so
    it reaches only the thread that sets it (and threads it starts)."""
    before = denormals_flushed()
    torch.set_flush_denormal(True)
    return before


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero now (a denormal times one comes out 0)."""
    tiny = torch.tensor([1e-39], dtype=torch.float64).float()  # made in float64: no flush on the way in
    return bool((tiny * 1.0).item() == 0.0)


def free_memory(device: torch.device) -> None:
    """Give cached GPU memory back after training or prediction."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def memory_budget(device: torch.device) -> int:
    """Bytes that inference may use on this device (a fraction of what is free)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    # CPU and MPS: stay modest so napari and the OS keep their share.
    return 2 * 2**30
