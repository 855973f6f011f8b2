"""What each Direct Denoiser normalisation (ModelConfig.direct_norm) costs per training pass, on this machine.

    python benchmarks/direct_norm_speed.py                         # the CPU default network, 4 crops of 64x64
    python benchmarks/direct_norm_speed.py --models A.cosdd B.cosdd  # trained Direct Denoisers as well

Times a forward and backward pass of the Direct Denoiser alone (the part the setting changes), each
normalisation in turn, for several rounds, so that a host whose speed drifts shows up as a spread
instead of a bias. With --models, trained networks are timed too, with and without flushing denormals,
to tell whether trained weights run slower than fresh ones. Prints milliseconds per pass.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_cosdd.engine.config import NORMS, model_config_from_preset
from napari_cosdd.engine.model_file import load_model
from napari_cosdd.engine.nets.direct_denoiser import DirectDenoiser


def ms_per_pass(net: torch.nn.Module, x: torch.Tensor, passes: int) -> float:
    net.train()
    for _ in range(3):
        net(x).square().mean().backward()
    t0 = time.perf_counter()
    for _ in range(passes):
        net(x).square().mean().backward()
    return (time.perf_counter() - t0) / passes * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=[], help="trained model files (.cosdd) to time as well")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = {}
    for norm in NORMS:
        config = model_config_from_preset(args.preset, args.crop, orientation="x", direct_norm=norm)
        nets[f"{norm}, fresh"] = DirectDenoiser(**DirectDenoiser.arguments(config))
    for path in args.models:
        model = load_model(path)
        nets[f"{model.config.direct_norm}, {path}"] = model.direct_denoiser
    x = torch.randn(args.batch, 1, args.crop, args.crop)
    times = {name: [] for name in nets}
    for r in range(args.rounds):
        torch.set_flush_denormal(bool(args.models) and r % 2 == 1)
        for name, net in nets.items():
            times[name].append(ms_per_pass(net, x, args.passes))
    torch.set_flush_denormal(False)
    print(f"Direct Denoiser, preset {args.preset}, {args.batch} crops of {args.crop}, {args.threads} threads, "
          f"forward + backward, ms per pass over {args.rounds} rounds (median, min-max)")
    for name, ts in times.items():
        print(f"  {name:40s} {statistics.median(ts):7.1f}  ({min(ts):.1f}-{max(ts):.1f})")


if __name__ == "__main__":
    main()
