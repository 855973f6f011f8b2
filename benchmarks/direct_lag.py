"""Does the Direct Denoiser lag behind the posterior when steps are scarce? One training, several answers.

    python benchmarks/direct_lag.py --cells moon_camera --minutes 10
    python benchmarks/direct_lag.py --cells moon_camera --minutes 10 --tag anneal-all \
        --train-override '{"anneal_share": 0.3, "anneal_to": 0.05, "anneal_parts": "all"}'

On a slow CPU the default setup makes a few hundred steps in 10 minutes, and on moon camera its direct
output fell 1 dB below its own mean of 20 posterior samples (docs/benchmarks.md). This script trains once
as the matrix does (benchmarks/real_matrix.py) and, from that one run, scores the Direct Denoiser's
weights in several forms on the cell's first frames (PSNR against the clean frames):

- ``kept``: what the engine returns: the snapshot at the best validation ELBO, with the weight average;
- ``last``: the Direct Denoiser's own weights at the final step, no average;
- ``avg D``: a moving average of its weights with decay D, at the final step (D = 0.9, 0.95, 0.99);
- ``avg share S``: a moving average whose horizon is a share S of the steps made so far;
- ``... +bn``: the same weights with their batch-norm statistics measured afresh on 50 training batches.

(The results tagged anneal-direct and anneal-all were made at commit f6daf1d, when this script had its
own fall of the rates; the engine's ``anneal_share`` setting, added next, does the same.)

It also prints the validation trace (step, ELBO, whether it was the best) and, with ``--mean20``, the mean
of 20 samples at the kept snapshot for comparison. Results go to stdout and to
benchmarks/results/direct_lag/<cell>-<tag>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

import realdata as R
from napari_cosdd.engine import config as C
from napari_cosdd.engine.autocorrelation import noise_autocorrelation
from napari_cosdd.engine.inference import denoise
from napari_cosdd.engine.train import Trainer

DECAYS = (0.9, 0.95, 0.99)
SHARES = (0.1, 0.2)
HERE = os.path.dirname(os.path.abspath(__file__))


class _Averages:
    """Moving averages of one module's float weights: fixed decays, and horizons that grow with the run."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.updates = 0
        start = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.states = {f"avg {d:g}": {k: v.clone() for k, v in start.items()} for d in DECAYS}
        self.states.update({f"avg share {s:g}": {k: v.clone() for k, v in start.items()} for s in SHARES})

    def _decay(self, name: str) -> float:
        n = self.updates
        warm = (1 + n) / (10 + n)  # the engine's warm-up: the first steps are not outweighed by the start
        if name.startswith("avg share"):
            horizon = max(float(name.split()[-1]) * n, 1.0)
            return min(warm, 1.0 - 1.0 / horizon)
        return min(warm, float(name.split()[1]))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        current = self.module.state_dict()
        for name, state in self.states.items():
            d = self._decay(name)
            for k, v in current.items():
                if v.dtype.is_floating_point:
                    state[k].lerp_(v.detach(), 1.0 - d)
                else:
                    state[k].copy_(v)


class ProbeTrainer(Trainer):
    """The engine's trainer, with extra averages of the Direct Denoiser kept beside its own."""

    def _begin(self):
        run = super()._begin()
        self.probe = _Averages(run.model.direct_denoiser)
        self.trace = []
        return run

    def _training_step(self, run) -> bool:
        ok = super()._training_step(run)
        if ok and (run.step - 1) % self.cfg.direct_every == 0:
            self.probe.update()
        return ok

    def _validate_and_keep_best(self, run, schedule: bool = True) -> None:
        before = run.best_val
        rates = {n: o.param_groups[0]["lr"] for n, o in run.optimisers.items()}  # as the last step used them
        super()._validate_and_keep_best(run, schedule)
        self.trace.append({"step": run.step, "elbo": run.last_val["elbo"], "best": run.best_val < before,
                           "direct": run.last_val.get("direct"), "kl": run.last_val["kl"], "lr": rates})

    def _finish(self, run):
        dd = run.model.direct_denoiser
        self.last_direct = {k: v.detach().cpu().clone() for k, v in dd.state_dict().items()}
        self.probe_states = {k: {n: t.cpu().clone() for n, t in s.items()} for k, s in self.probe.states.items()}
        self.probe_states["kept +bn"] = None  # filled below from the engine's own average
        batches = [self._to_device(self.sampler.batch(self.cfg.batch_size)) for _ in range(BN_BATCHES)]
        sources = {"last +bn": self.last_direct, "avg 0.9 +bn": self.probe_states["avg 0.9"],
                   "avg 0.99 +bn": self.probe_states["avg 0.99"]}
        if run.average is not None:
            sources["kept +bn"] = run.average.state
        else:
            del self.probe_states["kept +bn"]
        for name, state in sources.items():
            self.probe_states[name] = recompute_batch_norm(dd, state, batches)
        return super()._finish(run)


BN_BATCHES = 50


@torch.no_grad()
def recompute_batch_norm(module: torch.nn.Module, state: dict, batches: list) -> dict:
    """The weights in ``state`` with their batch-norm statistics measured afresh on ``batches`` (an equal-
    weight mean over all of them, as stochastic weight averaging does): a moving average of the weights
    keeps statistics that were measured on other weights."""
    twin = copy.deepcopy(module)
    twin.load_state_dict(state)
    norms = [m for m in twin.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    twin.train()
    for batch in batches:
        twin(batch)
    return {k: v.detach().cpu().clone() for k, v in twin.state_dict().items()}


def score_direct(model, state: dict, x, clean, device: str) -> float:
    keep = {k: v.clone() for k, v in model.direct_denoiser.state_dict().items()}
    model.direct_denoiser.load_state_dict(state)
    try:
        return R.psnr_frames(clean, denoise(model, x, "SYX", method="direct", device=device).direct)
    finally:
        model.direct_denoiser.load_state_dict(keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-override", default="{}")
    ap.add_argument("--tag", default="default")
    ap.add_argument("--mean20", action="store_true", help="also score the mean of 20 samples (slow on a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for image, noise in R.parse_cells(args.cells):
        cell = R.make_cell(image, noise, seed=0)
        orientation = noise_autocorrelation(cell.noisy, "SYX").orientation
        settings = dict(max_minutes=args.minutes, max_steps=None, threads=args.threads, device=args.device,
                        seed=args.seed)
        settings.update(json.loads(args.train_override))
        trainer = ProbeTrainer(cell.noisy, "SYX", orientation=orientation, train_config=C.TrainConfig(**settings))
        t0 = time.perf_counter()
        for _ in trainer.fit():
            pass
        seconds = time.perf_counter() - t0
        model = trainer.model.eval()
        x, clean = cell.noisy[:R.EVAL_FRAMES], cell.clean[:R.EVAL_FRAMES]
        scores = {"kept": R.psnr_frames(clean, denoise(model, x, "SYX", method="direct", device=args.device).direct),
                  "last": score_direct(model, trainer.last_direct, x, clean, args.device)}
        for name, state in trainer.probe_states.items():
            scores[name] = score_direct(model, state, x, clean, args.device)
        if args.mean20:
            scores["mean20 (kept)"] = R.psnr_frames(clean, denoise(
                model, x, "SYX", method="sample", n_samples=20, variance=False, device=args.device, seed=2).mean)
        best = [t["step"] for t in trainer.trace if t["best"]]
        record = {"cell": cell.name, "tag": args.tag, "commit": R.COMMIT_AT_START,
                  "machine": R.device_name(args.device),
                  "minutes": args.minutes, "steps": trainer.steps_done, "seconds": round(seconds, 1),
                  "best_step": best[-1] if best else None, "psnr_noisy": R.psnr_frames(clean, x.astype("float32")),
                  "psnr_direct": scores, "trace": trainer.trace, "settings": settings}
        out = os.path.join(HERE, "results", "direct_lag")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"{cell.name}-{args.tag}.json"), "w") as f:
            json.dump(record, f, indent=1)
        print(f"{cell.name} [{args.tag}] {trainer.steps_done} steps, {seconds:.0f} s, best ELBO at step "
              f"{record['best_step']}; noisy {record['psnr_noisy']:.2f}")
        for name, value in scores.items():
            print(f"  {name:16s} {value:.2f}")


if __name__ == "__main__":
    main()
