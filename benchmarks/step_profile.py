"""Where the time of one training step goes: its phases, then the operators that take it.

    python benchmarks/step_profile.py --preset small            # fp32, 2 threads, batch 4 of 64x64
    python benchmarks/step_profile.py --preset small --compile  # the same through torch.compile

The step is the Trainer's: every network's loss, backward, gradient clipping per group, an Adamax step
per group and the moving average of the Direct Denoiser's weights, on a batch of random crops in the
Trainer's memory layout. Printed: the median milliseconds of each phase over `--steps` steps after
`--warmup`, then torch.profiler's operators by their own CPU time over three more steps. It answers
whether a speed-up can come from the optimiser's side (foreach kernels, fewer clips) or only from the
convolutions and activations. Run it alone: on two cores anything else running changes every figure.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_cosdd.engine.config import TrainConfig, model_config_from_preset
from napari_cosdd.engine.device import prepare_cpu
from napari_cosdd.engine.nets.model import COSDD
from napari_cosdd.engine.train import WeightAverage

PHASES = ("forward", "backward", "clip", "optimiser", "average", "step")


def build(preset: str, crop: int, compiled: bool):
    cfg = TrainConfig()
    model = COSDD(model_config_from_preset(preset, crop)).train()
    layout = torch.channels_last if model.config.spatial_dims == 2 and cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    groups = model.parameter_groups()
    optimisers = {k: torch.optim.Adamax(p, lr=cfg.learning_rate) for k, p in groups.items()}
    average = WeightAverage(model.direct_denoiser, cfg.direct_average) if model.direct_denoiser is not None else None
    losses = torch.compile(model.losses) if compiled else model.losses
    return model, groups, optimisers, average, losses, layout, cfg.grad_clip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="run the losses through torch.compile (inductor)")
    p.add_argument("--top", type=int, default=15, help="operators to list")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    prepare_cpu()
    torch.manual_seed(0)
    model, groups, optimisers, average, losses_of, layout, clip = build(args.preset, args.crop, args.compile)
    rng = np.random.default_rng(0)
    shape = (args.batch, 1) + (args.crop,) * model.config.spatial_dims

    def step() -> dict[str, float]:
        x = torch.from_numpy(rng.normal(size=shape).astype(np.float32)).contiguous(memory_format=layout)
        t = [time.perf_counter()]
        losses = losses_of(x)
        total = sum(losses[k] for k in ("elbo", "signal", "direct") if k in losses)
        for o in optimisers.values():
            o.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        total.backward()
        t.append(time.perf_counter())
        for params in groups.values():
            bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip)))
        t.append(time.perf_counter())
        for o in optimisers.values():
            o.step()
        t.append(time.perf_counter())
        if average is not None:
            average.update()
        t.append(time.perf_counter())
        parts = np.diff(t).tolist()
        return dict(zip(PHASES, parts + [t[-1] - t[0]]))

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        step()
    timed = [step() for _ in range(args.steps)]
    params = sum(p.numel() for p in model.parameters())
    tensors = {k: len(v) for k, v in groups.items()}
    print(f"preset {args.preset}, {params / 1e6:.2f} M parameters in {tensors} tensors, batch {args.batch} of "
          f"{args.crop} px, {args.threads} threads, {'compiled' if args.compile else 'eager'}; "
          f"first step {first:.1f} s")
    total = float(np.median([s["step"] for s in timed]))
    for phase in PHASES:
        ms = float(np.median([s[phase] for s in timed])) * 1000
        print(f"  {phase:10s} {ms:8.1f} ms  {100 * ms / (total * 1000):5.1f} %")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    whole = sum(e.self_cpu_time_total for e in rows)
    print(f"operators by own CPU time over 3 steps (profiler on: {whole / 3e3:.0f} ms a step)")
    for e in rows[:args.top]:
        print(f"  {e.key:45s} {100 * e.self_cpu_time_total / whole:5.1f} %  {e.count // 3:5d} calls a step")


if __name__ == "__main__":
    main()
