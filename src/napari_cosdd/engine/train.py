"""Training as a generator of progress events, so the GUI and the command line drive it unchanged."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from . import data as D
from .config import (DEFAULT_PRESET_CPU, DEFAULT_PRESET_GPU, ModelConfig, TrainConfig,
                     model_config_from_preset)
from .device import autocast, cpu_has_bf16, free_memory, prepare_cpu, resolve_device
from .nets.model import COSDD

LOSS_NAMES = ("elbo", "kl", "nll", "signal", "direct")


class TrainingError(RuntimeError):
    """Training cannot go on; the message says what to change."""


@dataclass
class TrainingEvent:
    """One progress report. `kind` is "start", "step", "validation", "warning" or "done"."""

    kind: str
    step: int
    total_steps: int | None
    epoch: float
    elapsed: float
    eta: float | None
    train: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] | None = None
    lr: float = 0.0
    best_val: float | None = None
    skipped_steps: int = 0
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """Progress in [0, 1] by whichever budget ends first, when one is known."""
        if self.eta is None:
            return None
        total = self.elapsed + self.eta
        return 1.0 if total <= 0 else min(self.elapsed / total, 1.0)


class CollapseGuard:
    """Watches the validation KL while training runs and says when the latents have died.

    A collapsed model (the posterior equal to the prior, so the AR decoder explains the whole image)
    can have a good ELBO; its samples, their mean and the Direct Denoiser are all one flat image. The
    guard acts after `patience` validations in a row under `threshold` nats per pixel: first by
    restarting from fresh weights with another seed (up to `restarts` times), then by stopping with a
    message. The threshold and the remedy are justified in docs/benchmarks.md.
    """

    def __init__(self, threshold: float, patience: int, restarts: int) -> None:
        self.threshold = threshold
        self.patience = patience
        self.restarts_left = restarts
        self.restarts_done = 0
        self.low = 0

    def check(self, val_kl: float) -> str | None:
        """None while the latents live; "restart" or "stop" when they have collapsed."""
        if self.threshold <= 0:
            return None
        self.low = self.low + 1 if val_kl < self.threshold else 0
        if self.low < self.patience:
            return None
        self.low = 0
        if self.restarts_left > 0:
            self.restarts_left -= 1
            self.restarts_done += 1
            return "restart"
        return "stop"


def anneal_factor(progress: float, share: float, final: float, start: float | None = None) -> float:
    """The learning-rate multiplier at ``progress`` (the share of the budget spent, 0 to 1): 1 until the
    fall starts (by default at the budget's last ``share``; earlier when ``start`` is given), then
    falling linearly to ``final`` over ``share`` of the budget."""
    start = 1 - share if start is None else start
    if share <= 0 or progress <= start:
        return 1.0
    return 1.0 - (1.0 - final) * min((progress - start) / share, 1.0)


def collapse_message(kl: float, step: int, restarts: int) -> str:
    tried = f" after {restarts} fresh start{'s' if restarts != 1 else ''} with another seed" if restarts else ""
    return (
        f"Training stopped: the latents collapsed (KL {kl:.5f} nats per pixel at step {step}){tried}. The "
        "model explains the images as noise alone, so its output would be a flat image. Check the "
        "orientation in the Noise widget (or `napari-cosdd autocorr`); if it is right, try a larger preset "
        "or a lower learning rate (and the 'adamax' optimizer if you changed it), and make sure the images "
        "hold structure (a signal) beyond the noise.")


class WeightAverage:
    """An exponential moving average of one network's weights and batch-norm statistics.

    The Direct Denoiser learns from one posterior sample per step, a noisy target, so its weights
    jitter from step to step; their average over the last ~100 steps denoised 0.08 dB better in a
    10-minute CPU run (docs/benchmarks.md). Early on the decay is lowered so the average follows the fast first
    steps instead of remembering the random initial weights.
    """

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.module = module
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, current = [], []
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                averaged.append(self.state[name])
                current.append(value.detach())
            else:
                self.state[name].copy_(value)
        if averaged:  # one fused call, not a kernel per tensor (272 of them in the `small` Direct Denoiser)
            torch._foreach_lerp_(averaged, current, 1.0 - decay)


def _snapshot(model: COSDD, average: WeightAverage | None = None) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights, to restore the best ones at the end; with `average`, the Direct
    Denoiser's averaged weights stand in for its current ones."""
    state = _cpu_copy(model.state_dict())
    if average is not None:
        state.update({f"direct_denoiser.{k}": v for k, v in _cpu_copy(average.state).items()})
    return state


def _cpu_copy(value):
    """Nested dicts and lists with their tensors copied to the CPU (for the model file)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def scalar_losses(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Losses as plain floats; the per-level KL becomes kl_0 (finest level), kl_1, ... All of them come
    off the device in one copy: on a GPU each separate read would wait for the device again."""
    names, parts = [], []
    for k, v in losses.items():
        flat = v.detach().float().reshape(-1)
        names += [f"kl_{i}" for i in range(flat.numel())] if k == "kl_levels" else [k]
        parts.append(flat)
    values = torch.cat(parts).cpu().tolist() if parts else []
    return dict(zip(names, values))


def _seed_everything(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)


def _crop_spatial_dims(model_config: ModelConfig | None, spatial_dims: int | None, orientation: str) -> int:
    if model_config is not None:
        return model_config.spatial_dims
    if spatial_dims is not None:
        return spatial_dims
    return 3 if orientation == "z" else 2


class Trainer:
    """Holds the data, the model and the optimisers of one training run.

    Bad input is rejected here, before any training starts. `fit()` is a generator of
    TrainingEvent; `stop()` (from any thread) ends it at the next step. Whatever ends training
    (budget, early stopping, stop request, closing the generator), the model keeps the weights with
    the best validation ELBO, so it is always usable.

    Parameters
    ----------
    images : array or list of arrays
        Noisy images, sizes may differ; axes given by `axes`.
    axes : str
        Letters over S, T, C, Z, Y, X, one per array axis.
    model : COSDD, optional
        Continue training this model (its normalisation and architecture are kept).
    preset : str, optional
        Network size when starting afresh ("tiny", "cpu", "small", "default", "large"); by default
        "cpu", on a CPU and on a GPU (the preset the real-data matrix chose).
    orientation : str
        Noise axis when starting afresh: "x", "y", "z" or "none".
    train_config : TrainConfig
        Budgets, optimisation and device settings.
    model_overrides : dict
        ModelConfig fields that override the preset.
    """

    def __init__(self, images, axes: str, model: COSDD | None = None, preset: str | None = None,
                 orientation: str = "x", train_config: TrainConfig | None = None,
                 spatial_dims: int | None = None, dist_context=None, **model_overrides) -> None:
        self.cfg = train_config or TrainConfig()
        self.messages: list[str] = []
        self.dist = dist_context
        self.device = dist_context.device if dist_context is not None else resolve_device(self.cfg.device)
        if preset is None:
            preset = DEFAULT_PRESET_GPU if self.device.type == "cuda" else DEFAULT_PRESET_CPU
        _seed_everything(self.cfg.seed)  # before the networks are initialised
        dims = _crop_spatial_dims(model.config if model else None, spatial_dims, orientation)
        engine_images = D.as_engine_images(images, axes, dims, max_bytes=self.cfg.max_train_gb * 1e9,
                                           notes=self.messages)
        if self.cfg.clip_outliers is not None:  # before the statistics, so they describe what is trained on
            engine_images, limits = D.clip_outliers(engine_images, self.cfg.clip_outliers)
            self.messages.append("clipped to " + ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in limits))
        multiple = model.config.size_multiple if model else 1
        crop, msg = D.fit_crop(engine_images, self.cfg.crop_size, multiple)
        if msg:
            self.messages.append(msg)
        if model is None:
            overrides = dict(model_overrides)
            overrides.setdefault("orientation", orientation)
            overrides["in_channels"] = engine_images[0].shape[0]
            overrides["spatial_dims"] = dims
            overrides.setdefault("downsampling", None)
            model_config = model_config_from_preset(preset, min(crop), **overrides)
            # The crop must be a multiple of the total downsampling.
            m = model_config.size_multiple
            crop = tuple((c // m) * m for c in crop)
            self.model = COSDD(model_config)
            mean, std = D.channel_stats(engine_images)
            self.model.set_normalisation(mean, std)
            self.history: list[dict] = []
        else:
            if model.config.in_channels != engine_images[0].shape[0]:
                raise D.InputError(
                    f"the model was trained on {model.config.in_channels} channel(s) but these images have "
                    f"{engine_images[0].shape[0]}; train a new model for them"
                )
            self.model = model
            self.history = list(getattr(model, "history", []))
        self.crop = crop
        self.split = D.split_train_val(engine_images, self.cfg.val_fraction, crop, self.cfg.seed)
        self.messages.append(f"split: {self.split.how}")
        mean = self.model.data_mean.numpy().reshape((-1,) + (1,) * dims)
        std = self.model.data_std.numpy().reshape((-1,) + (1,) * dims)
        self.train_images = [(i - mean) / std for i in self.split.train]
        val_images = [(i - mean) / std for i in self.split.val]
        # Each process of a distributed run draws its own crops; the split above is the same everywhere.
        sampler_seed = self.cfg.seed
        if self.dist is not None and sampler_seed is not None:
            sampler_seed += 1000 * self.dist.rank
        flips, swap = (D.noise_safe_flips(self.model.config.orientation, self.model.config.spatial_dims)
                       if self.cfg.flip_crops else ((), False))
        self.sampler = D.CropSampler(self.train_images, crop, sampler_seed, flips, swap)
        self.val_crops = D.fixed_crops(val_images, crop, self.cfg.val_crops, self.cfg.seed)
        train_pixels = sum(i[0].size for i in self.train_images)
        processes = self.dist.world_size if self.dist is not None else 1
        self.steps_per_epoch = max(1, math.ceil(train_pixels / (math.prod(crop) * self.cfg.batch_size * processes)))
        self._stop = threading.Event()
        self.collapsed = False  # set when the collapse guard stopped training: the model is not usable
        self.steps_done = sum(h.get("steps", 0) for h in self.history)

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask training to end at the next step (thread-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ internals

    def _to_device(self, batch: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
        x = torch.from_numpy(batch).to(device or self.device, non_blocking=True)
        return x.contiguous(memory_format=self._layout) if x.dim() == 4 else x

    @property
    def _layout(self) -> torch.memory_format:
        """Channels-last for 2-D models when asked: the same arithmetic, laid out as the CPU's
        convolutions prefer (measured: 0.88 -> 0.81 s per step, small preset, 2 threads)."""
        if self.cfg.channels_last and self.model.config.spatial_dims == 2:
            return torch.channels_last
        return torch.contiguous_format

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean losses over the fixed validation crops, with a fixed random stream so that
        successive validations differ only because the weights did. It runs where the model is: on the
        training device during `fit`, and where the caller keeps the model after it (`fit` puts it back)."""
        self.model.eval()
        sums: dict[str, float] = {}
        n = 0
        device = next(self.model.parameters()).device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(12345)
            for start in range(0, len(self.val_crops), self.cfg.batch_size):
                batch = self._to_device(self.val_crops[start:start + self.cfg.batch_size], device)
                with autocast(device, self.cfg.bf16, self.cfg.cpu_bf16):
                    losses = scalar_losses(self.model.losses(batch))
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v * len(batch)
                n += len(batch)
        self.model.train()
        return {k: v / n for k, v in sums.items()}

    @staticmethod
    def _follow_schedule(scheduler, optimisers: dict, val_elbo: float, direct_floor: float = 0.0) -> None:
        """Step the ELBO's plateau schedule and give the other optimisers the same learning rate, except
        that the Direct Denoiser's stays at or above ``direct_floor``: its target, the posterior, still
        moves after the ELBO levels off, and it needs the steps to follow it."""
        scheduler.step(val_elbo)
        lr = optimisers["elbo"].param_groups[0]["lr"]
        for name, optimiser in optimisers.items():
            if name != "elbo":
                for group in optimiser.param_groups:
                    group["lr"] = max(lr, direct_floor) if name == "direct" else lr

    def _agreed_validation(self, average: WeightAverage | None = None) -> dict[str, float]:
        """Validation losses, averaged over the processes of a distributed run so that the learning-rate
        schedule, the best weights and early stopping are decided alike everywhere."""
        if self.dist is None:
            return self.validate()
        self.dist.broadcast_buffers(self.model)  # validation and the saved weights use rank 0's statistics
        if average is not None:  # its batch-norm statistics came from each process's own crops
            self.dist.broadcast_tensors(average.state.values())
        return self.dist.mean(self.validate())

    def _optimisation(self, groups: dict):
        """Fresh optimisers (one per loss), the learning-rate schedule and the Direct Denoiser's average.

        One plateau schedule, on the validation ELBO, sets every optimiser's learning rate. The signal
        decoder's and the Direct Denoiser's own validation losses are measured against a random
        posterior sample, so they jump from one validation to the next; a plateau rule on them cut the
        Direct Denoiser's rate early and cost it 0.5 dB in 10-minute runs (docs/benchmarks.md)."""
        cfg = self.cfg
        optimiser_class = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}[cfg.optimizer]
        optimisers = {k: optimiser_class(p, lr=cfg.learning_rate) for k, p in groups.items()}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimisers["elbo"], factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr)
        average = None
        if self.model.direct_denoiser is not None and cfg.direct_average > 0:
            average = WeightAverage(self.model.direct_denoiser, cfg.direct_average)
        return optimisers, scheduler, average

    def _training_state(self, optimisers: dict, scheduler, average: WeightAverage | None, best_val: float) -> dict:
        """What a resumed run needs to go on where this one stopped: the optimisers' moments and steps,
        the schedule, the averaging's progress and the best validation ELBO (tensors and plain values
        only, so the model file stays loadable without running code)."""
        return {
            "optimizer": self.cfg.optimizer,
            "optimisers": {k: _cpu_copy(o.state_dict()) for k, o in optimisers.items()},
            "scheduler": _cpu_copy(scheduler.state_dict()),
            "average_updates": average.updates if average is not None else 0,
            "best_val_elbo": None if math.isinf(best_val) else float(best_val),
            "steps": self.steps_done,
        }

    def _restore_training_state(self, groups: dict):
        """Fresh optimisers, schedule and average, loaded with a saved run's state when the model holds one
        that fits. Returns them and a message that says which. This run's own settings (patience, factor,
        minimum rate) stay in force."""
        optimisers, scheduler, average = self._optimisation(groups)
        state = getattr(self.model, "training_state", None)
        if not state:
            return optimisers, scheduler, average, "fresh optimisers (the model holds no optimiser state)"
        if state.get("optimizer") != self.cfg.optimizer or set(state.get("optimisers", {})) != set(optimisers):
            return optimisers, scheduler, average, (
                f"fresh optimisers (the model was trained with {state.get('optimizer')!r} and these parts: "
                f"{sorted(state.get('optimisers', {}))}; this run uses {self.cfg.optimizer!r})")
        try:
            for name, optimiser in optimisers.items():
                optimiser.load_state_dict(state["optimisers"][name])
            scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            optimisers, scheduler, average = self._optimisation(groups)  # nothing half-loaded
            return optimisers, scheduler, average, f"fresh optimisers (the saved state does not fit: {err})"
        cfg = self.cfg
        scheduler.patience, scheduler.factor = cfg.lr_patience, cfg.lr_factor
        scheduler.min_lrs = [cfg.min_lr] * len(scheduler.min_lrs)
        if average is not None:
            average.updates = int(state.get("average_updates", 0))
        lr = optimisers["elbo"].param_groups[0]["lr"]
        return optimisers, scheduler, average, (
            f"optimisers and schedule continued from step {state.get('steps', '?')} (learning rate {lr:g})")

    @torch.no_grad()
    def _reinitialise(self, seed: int) -> None:
        """New random weights in place (the normalisation stays), drawn alike on every process."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = COSDD(self.model.config)
        state = {k: v for k, v in fresh.state_dict().items() if k not in ("data_mean", "data_std")}
        self.model.load_state_dict(state, strict=False)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> Iterator[TrainingEvent]:
        """Train until a budget ends, early stopping, a stop request or a collapse; yield progress events.

        Each pass of the loop is one training step; every `val_every` steps a validation keeps the
        best weights and feeds the learning-rate schedule and the collapse guard. The model ends with
        the best weights, back on its device, whatever ends the run.
        """
        cfg = self.cfg
        run = self._begin()
        yield self._event(run, "start", "; ".join(self.messages + run.notes + [
            f"device {self.device}", f"crop {self.crop}", f"{self.steps_per_epoch} steps per epoch"]))
        try:
            while not self._run_is_over(run):
                if not self._training_step(run):
                    yield self._event(run, "warning", f"step {run.step}: non-finite loss, step skipped")
                    continue
                if run.step % cfg.val_every != 0:
                    yield self._event(run, "step")
                    continue
                self._validate_and_keep_best(run)
                yield self._event(run, "validation")
                restarted = self._act_on_collapse(run)
                if restarted:
                    yield self._event(run, "warning", restarted)
                    continue
                # Once the rates fall (at the budget's end or early), the fall runs to its end.
                if run.since_best >= cfg.early_stopping_patience and not self._falling(run):
                    if cfg.anneal_share > 0:  # the fall is still ahead: it starts now instead
                        yield self._event(run, "warning", self._start_fall_now(run))
                        continue
                    run.finished_reason = "early stopping: validation ELBO stopped improving"
                    break
            if run.step % cfg.val_every != 0 and run.step > 0:
                self._validate_and_keep_best(run, schedule=False)  # the final weights count too
        finally:
            dropped_calibration = self._finish(run)
        if dropped_calibration:
            yield self._event(run, "warning", "the model's std calibration was fitted on the weights before this "
                                              "run and was removed; calibrate it again against your reference")
        yield self._event(run, "done", run.finished_reason)

    # ------------------------------------------------------------------ the loop's named steps

    def _begin(self) -> "_Run":
        """Put the model on the training device and set up (or restore) the optimisation."""
        cfg = self.cfg
        _seed_everything(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        flushed_before = prepare_cpu()  # put back at the end: the caller's thread is left as it was
        home = next(self.model.parameters()).device
        model = self.model.to(self.device, memory_format=self._layout)
        model.vae.checkpointing = cfg.checkpointing
        model.train()
        groups = model.parameter_groups()
        if self.dist is not None:
            from .distributed import wrap

            compute_losses = wrap(model, self.dist)
        else:
            compute_losses = model.losses
        notes, best_val = [], math.inf
        if self.history:  # trained weights: they are the best so far until this run's validations beat them
            optimisers, scheduler, average, note = self._restore_training_state(groups)
            notes.append(note)
            best_val = self._agreed_validation(average)["elbo"]
            notes.append(f"the loaded weights' validation ELBO is {best_val:.4f}; they are kept unless this run "
                         "does better")
        else:
            optimisers, scheduler, average = self._optimisation(groups)
        if cfg.direct_every > 1 and self.dist is not None:
            notes.append("direct_every: a distributed run trains the Direct Denoiser on every step")
        if cfg.cpu_bf16 and self.device.type == "cpu" and not cpu_has_bf16():
            notes.append("fp32 training: this CPU has no bf16 instructions (cpu_bf16 uses them where there are)")
        start = time.perf_counter()
        return _Run(model=model, groups=groups, compute_losses=compute_losses, optimisers=optimisers,
                    rates=self._rates(optimisers),
                    scheduler=scheduler, average=average, best_val=best_val, best_state=_snapshot(model, average),
                    guard=CollapseGuard(cfg.collapse_kl, cfg.collapse_patience, cfg.collapse_restarts),
                    start=start, deadline=start + cfg.max_minutes * 60 if cfg.max_minutes else None,
                    home=home, flushed_before=flushed_before, notes=notes)

    def _run_is_over(self, run: "_Run") -> bool:
        """The step budget or the time is spent, an early fall of the rates has ended, or a stop was asked
        (all processes agree)."""
        if self.cfg.max_steps is not None and run.step >= self.cfg.max_steps:
            return True
        now = time.perf_counter()
        out_of_time = run.deadline is not None and now >= run.deadline
        stop_asked = self._stop.is_set()
        time_done = (now - run.start) / (run.deadline - run.start) if run.deadline else 0.0
        if self.dist is not None:  # one process out of time or stopped: all stop together (and agree on the
            # share of the time spent, so that the final fall of the rates is the same everywhere)
            out_of_time, stop_asked, time_done = self.dist.max(out_of_time, stop_asked, time_done)
            out_of_time, stop_asked = bool(out_of_time), bool(stop_asked)
        run.time_done = min(time_done, 1.0)
        if (not out_of_time and run.fall_start is not None
                and self._progress(run) >= run.fall_start + self.cfg.anneal_share):
            run.finished_reason = ("early stopping: the validation ELBO stopped improving, so the rates fell "
                                   "early and training ended after the fall")
            return True
        if stop_asked and not out_of_time:
            run.finished_reason = "stopped on request"
        return out_of_time or stop_asked

    def _training_step(self, run: "_Run") -> bool:
        """One optimisation step of every network on its own loss; False when it was skipped because
        a loss or a gradient was not finite (TrainingError after `max_nonfinite` in a row)."""
        cfg = self.cfg
        self._fall_of_rates(run)
        batch = self._to_device(self.sampler.batch(cfg.batch_size))
        # DDP needs every parameter in every step, so a distributed run trains the Direct Denoiser always.
        train_direct = self.dist is not None or run.step % cfg.direct_every == 0
        with autocast(self.device, cfg.bf16, cfg.cpu_bf16):
            losses = run.compute_losses(batch, train_direct)
        total = sum(losses[k] for k in ("elbo", "signal", "direct") if k in losses)
        for o in run.optimisers.values():
            o.zero_grad(set_to_none=True)
        # Backward and clipping run whatever the loss, so that the step asks the device once whether
        # all was finite (on a GPU every such question waits for the kernels queued before it), and so
        # that every process of a distributed run takes part in the same gradient exchange.
        total.backward()
        norms = [torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) for params in run.groups.values()]
        ok = bool(torch.stack([torch.isfinite(total), *(torch.isfinite(n) for n in norms)]).all())
        if self.dist is not None:  # a step is taken on every process or on none
            ok = not self.dist.any(not ok)[0]
        run.step += 1
        if not ok:
            run.skipped += 1
            run.consecutive_bad += 1
            for o in run.optimisers.values():
                o.zero_grad(set_to_none=True)
            if run.consecutive_bad >= cfg.max_nonfinite:
                raise TrainingError(
                    f"{run.consecutive_bad} steps in a row gave a non-finite loss. Try fewer mixture components, "
                    "clipping outliers (clip_outliers=(0.1, 99.9)), or a lower learning rate (now "
                    f"{cfg.learning_rate:g}).")
            return False
        run.consecutive_bad = 0
        for o in run.optimisers.values():
            o.step()
        if run.average is not None and train_direct:
            run.average.update()
        for k, v in scalar_losses(losses).items():
            run.running[k] = v if k not in run.running else 0.9 * run.running[k] + 0.1 * v
        return True

    def _validate_and_keep_best(self, run: "_Run", schedule: bool = True) -> None:
        """Validate; keep the weights when they are the best so far; let the schedule see the ELBO."""
        run.last_val = self._agreed_validation(run.average)
        if schedule:
            if self.cfg.lr_patience > 0:  # 0: no plateau rule, the rates stay as they are until the fall
                self._set_rates(run, 1.0)  # the plateau schedule sees and sets the rates before the final fall
                self._follow_schedule(run.scheduler, run.optimisers, run.last_val["elbo"],
                                      self.cfg.learning_rate * self.cfg.direct_lr_floor)
                run.rates = self._rates(run.optimisers)
            self._fall_of_rates(run)
        if run.last_val["elbo"] < run.best_val:
            run.best_val = run.last_val["elbo"]
            run.best_state = _snapshot(run.model, run.average)
            run.since_best = 0
        else:
            run.since_best += 1

    @staticmethod
    def _rates(optimisers: dict) -> dict[str, float]:
        return {name: o.param_groups[0]["lr"] for name, o in optimisers.items()}

    def _set_rates(self, run: "_Run", factor: float) -> None:
        """Each optimiser's rate at ``factor`` times the schedule's (only the parts that anneal_parts names
        are scaled; the others keep the schedule's rate)."""
        for name, optimiser in run.optimisers.items():
            scaled = self.cfg.anneal_parts == "all" or name == "direct"
            for group in optimiser.param_groups:
                group["lr"] = run.rates[name] * (factor if scaled else 1.0)

    def _fall_of_rates(self, run: "_Run") -> None:
        """Over the budget's last ``anneal_share`` the rates fall linearly to ``anneal_to`` of the
        schedule's. At a constant rate the weights jitter from step to step (on a slow CPU the Direct
        Denoiser's output moved by 2.5 dB between two runs that differed only in where they stopped);
        the fall lets them settle before the budget ends."""
        cfg = self.cfg
        if cfg.anneal_share <= 0:
            return
        done = self._progress(run, ahead=1)  # the share spent once this step is taken
        self._set_rates(run, anneal_factor(done, cfg.anneal_share, cfg.anneal_to, run.fall_start))

    def _progress(self, run: "_Run", ahead: int = 0) -> float:
        """The share of the budget spent, by whichever budget (time or steps) is further along."""
        done = run.time_done
        if self.cfg.max_steps:
            done = max(done, (run.step + ahead) / self.cfg.max_steps)
        return done

    def _falling(self, run: "_Run") -> bool:
        """Whether the rates are falling: an early fall began, or the budget's last share is reached.
        Early stopping waits for the fall's end: the fall is where a run's last gains come from (on the
        matrix's moon x the validation ELBO had stalled and the run ended at 424 s of 600, 4 s into its
        fall; docs/benchmarks.md)."""
        share = self.cfg.anneal_share
        return share > 0 and (run.fall_start is not None or self._progress(run) >= 1 - share)

    def _start_fall_now(self, run: "_Run") -> str:
        run.fall_start = self._progress(run)
        run.since_best = 0
        return (f"The validation ELBO has not improved for {self.cfg.early_stopping_patience} validations (step "
                f"{run.step}): the learning rates fall now, over {self.cfg.anneal_share:.0%} of the budget, and "
                "training ends after that fall, earlier than the budget.")

    def _act_on_collapse(self, run: "_Run") -> str | None:
        """Let the collapse guard judge the last validation's KL: a restart from fresh weights (its
        message is returned), or TrainingError when the fresh starts are spent."""
        cfg = self.cfg
        verdict = run.guard.check(run.last_val["kl"])
        if verdict == "stop":
            run.finished_reason = "stopped: the latents collapsed"
            self.collapsed = True
            raise TrainingError(collapse_message(run.last_val["kl"], run.step, run.guard.restarts_done))
        if verdict != "restart":
            return None
        seed = (cfg.seed or 0) + 7 * run.guard.restarts_done
        self._reinitialise(seed)
        run.optimisers, run.scheduler, run.average = self._optimisation(run.groups)
        run.rates = self._rates(run.optimisers)
        run.best_val, run.since_best = math.inf, 0
        run.best_state = _snapshot(run.model, run.average)
        return (f"The latents collapsed (KL {run.last_val['kl']:.5f} nats per pixel, under {cfg.collapse_kl:g}, "
                f"at step {run.step}): starting again from fresh weights with seed {seed} (fresh start "
                f"{run.guard.restarts_done} of {cfg.collapse_restarts}).")

    def _finish(self, run: "_Run") -> bool:
        """The best weights back in the model, the run in its history and training state, the model back
        where the caller had it. True when an old std calibration was removed (the weights changed)."""
        model = run.model
        self._set_rates(run, 1.0)  # a continued run starts from the schedule's rates, not the fallen ones
        model.load_state_dict(run.best_state)
        model.eval()
        self.steps_done += run.step
        self.history.append({
            "steps": run.step, "seconds": round(time.perf_counter() - run.start, 2), "device": str(self.device),
            "best_val_elbo": None if math.isinf(run.best_val) else run.best_val, "skipped_steps": run.skipped,
            "crop": list(self.crop), "batch_size": self.cfg.batch_size, "reason": run.finished_reason,
            "final_val": run.last_val,
        })
        model.history = self.history
        model.training_state = self._training_state(run.optimisers, run.scheduler, run.average, run.best_val)
        dropped = run.step > 0 and getattr(model, "calibration", None) is not None
        if dropped:
            model.calibration = None  # fitted on the weights before this run: it no longer holds
        model.to(run.home, memory_format=torch.contiguous_format)  # back where and as the caller had it
        torch.set_flush_denormal(run.flushed_before)
        free_memory(self.device)
        return dropped

    def _event(self, run: "_Run", kind: str, message: str = "") -> TrainingEvent:
        cfg = self.cfg
        elapsed = time.perf_counter() - run.start
        eta = None
        if run.step > 0:
            candidates = []
            if cfg.max_steps:
                candidates.append(max(cfg.max_steps - run.step, 0) * elapsed / run.step)
            if run.deadline:
                candidates.append(max(run.deadline - time.perf_counter(), 0.0))
            if run.fall_start is not None:  # the run ends when the early fall has run its share of the budget
                left = max(run.fall_start + cfg.anneal_share - self._progress(run), 0.0)
                if run.deadline:
                    candidates.append(left * (run.deadline - run.start))
                if cfg.max_steps:
                    candidates.append(left * cfg.max_steps * elapsed / run.step)
            eta = min(candidates) if candidates else None
        return TrainingEvent(
            kind=kind, step=run.step, total_steps=cfg.max_steps, epoch=run.step / self.steps_per_epoch,
            elapsed=elapsed, eta=eta, train=dict(run.running), val=run.last_val,
            lr=run.optimisers["elbo"].param_groups[0]["lr"],
            best_val=None if math.isinf(run.best_val) else run.best_val, skipped_steps=run.skipped,
            message=message)


@dataclass
class _Run:
    """The state of one `fit` run that its named steps share."""

    model: COSDD
    groups: dict
    compute_losses: object
    optimisers: dict
    rates: dict  # each optimiser's rate as the plateau schedule set it, before the final fall
    scheduler: object
    average: WeightAverage | None
    best_val: float
    best_state: dict
    guard: CollapseGuard
    start: float
    deadline: float | None
    home: torch.device
    flushed_before: bool
    notes: list[str]
    step: int = 0
    skipped: int = 0
    consecutive_bad: int = 0
    since_best: int = 0
    time_done: float = 0.0  # the share of the time budget spent (0 without one), agreed between processes
    fall_start: float | None = None  # the share of the budget at which an early fall of the rates began
    running: dict[str, float] = field(default_factory=dict)
    last_val: dict[str, float] | None = None
    finished_reason: str = "budget reached"


def train(images, axes: str, **kwargs) -> COSDD:
    """Train to the end of the budget and return the model (the Python API's one-call form)."""
    trainer = Trainer(images, axes, **kwargs)
    for _ in trainer.fit():
        pass
    return trainer.model
