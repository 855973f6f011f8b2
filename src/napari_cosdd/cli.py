"""The `napari-cosdd` command line: train, denoise, autocorr, check-noise and demo, on the same engine
and the same progress events as the napari widgets.

Errors print one line; the exit status is 1 for bad data or model files, 2 for usage mistakes (with the
usage), 3 for anything unexpected (--debug shows the traceback). A training stopped with Ctrl-C saves the
best model so far.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .engine.progress import format_duration

PROG = "napari-cosdd"
#: Exit statuses: bad data or a bad model file (a one-line message says what to do), a usage mistake
#: (the usage and a one-line message), and anything unexpected (a short message; --debug shows where).
EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_UNEXPECTED = 3

# Fields that have their own flags or are set from the data.
TRAIN_OWN_FLAGS = {"max_steps", "max_minutes", "seed", "device"}
MODEL_FROM_DATA = {"in_channels", "spatial_dims", "orientation"}
TILE_HELP = "largest tile side in pixels (default: from memory; the tiles are shrunk to share the image evenly)"


class UsageError(Exception):
    """A usage mistake (arguments that cannot work together or with the files): the usage and one line,
    exit status 2. ``usage`` is the usage of the (sub)command when known."""

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # our one line, after the usage
        raise UsageError(f"{message} (see {self.prog} --help)", usage=self.format_usage())


@contextlib.contextmanager
def _settings_are_usage():
    """Settings built from flags: a ValueError there is a usage mistake, an InputError stays about the data."""
    from .engine.data import InputError

    try:
        yield
    except InputError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from None


# ------------------------------------------------------------------ progress


class ProgressBar:
    """tqdm's bar on a terminal. In a log (not a terminal: clusters, CI) tqdm is off and a plain line is
    written every `every` seconds and at the end, so the file reads line by line."""

    STEPS = 1000  # the bar counts thousandths of the work

    def __init__(self, stream=None, every: float = 10.0) -> None:
        from tqdm import tqdm

        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self._last_line = -float("inf")
        self._text = ""
        self._written = None
        self._bar = tqdm(total=self.STEPS, file=self.stream, disable=not self.tty, mininterval=0.1,
                         bar_format="{percentage:3.0f}% |{bar:24}| {desc}", dynamic_ncols=True, leave=True)

    def update(self, fraction: float | None, text: str) -> None:
        """Move to `fraction` of the work (None: keep it) and show `text`."""
        self._text = text
        target = self._bar.n if fraction is None else int(round(self.STEPS * min(max(fraction, 0.0), 1.0)))
        if self.tty:
            self._bar.set_description_str(text, refresh=False)
            self._bar.update(max(target - self._bar.n, 0))
            return
        self._bar.n = target
        if time.monotonic() - self._last_line >= self.every:
            self._line()

    def message(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if self.tty:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Finish: the last state is drawn once more and the bar ends its line."""
        if not self.tty:
            self._line()
        self._bar.close()

    def _line(self) -> None:
        line = f"{100 * self._bar.n / self.STEPS:3.0f}% {self._text}"
        if line != self._written:
            self.stream.write(line + "\n")
            self.stream.flush()
        self._last_line, self._written = time.monotonic(), line


def training_line(ev) -> str:
    """The progress text of one training event (losses, time, time left)."""
    total = f"/{ev.total_steps}" if ev.total_steps else ""
    parts = [f"step {ev.step}{total}", f"{format_duration(ev.elapsed)} elapsed", f"{format_duration(ev.eta)} left"]
    if ev.train:
        parts.append("train " + " ".join(f"{k} {ev.train[k]:.4f}" for k in ("elbo", "kl", "nll") if k in ev.train))
    if ev.val:
        parts.append(f"val elbo {ev.val['elbo']:.4f}")
    if ev.skipped_steps:
        parts.append(f"{ev.skipped_steps} skipped")
    return " | ".join(parts)


# ------------------------------------------------------------------ reading inputs


def _read_each(patterns: list[str], axes: str | None, spatial_dims: int, say) -> list:
    """Read every image, each with its own axes (given, from its metadata, or assumed)."""
    from .engine.io import default_axes, expand_paths, read_image

    files = [read_image(p, axes) for p in expand_paths(patterns)]
    for f in files:
        if f.axes is None:
            f.axes = default_axes(f.data.ndim, spatial_dims)
            say(f"{f.path.name}: axes not given and not in the file: assuming {f.axes!r} (pass --axes to change it)")
    return files


def _read_images(patterns: list[str], axes: str | None, spatial_dims: int, say) -> tuple[list, str]:
    """Read every image; all must share one axes string (given, from metadata, or assumed)."""
    from .engine.io import default_axes, expand_paths, read_image

    files = [read_image(p, axes) for p in expand_paths(patterns)]
    found = {f.axes for f in files if f.axes}
    if len(found) > 1:
        raise UsageError("the images' metadata give different axes (" + ", ".join(sorted(found))
                         + "); pass --axes, or train on them separately")
    if found:
        chosen = found.pop()
        if any(f.axes is None for f in files):
            raise UsageError("some images have axes in their metadata and some do not; pass --axes")
    else:
        ndims = {f.data.ndim for f in files}
        if len(ndims) > 1:
            raise UsageError(f"the images have different numbers of dimensions {sorted(ndims)}; pass --axes or "
                             "train on them separately")
        chosen = default_axes(ndims.pop(), spatial_dims)
        say(f"axes not given and not in the files: assuming {chosen!r} (pass --axes to change it)")
    for f in files:
        f.axes = chosen
    return files, chosen


def _parse_region(text: str | None, ndim_spatial: int):
    """'y0:y1,x0:x1' -> a box; a .npy/.tif path -> a boolean mask."""
    if text is None:
        return None
    if os.path.exists(text):
        from .engine.io import read_image

        mask = read_image(text).data
        return mask.astype(bool)
    try:
        box = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--region {text!r}: give start:stop per spatial axis, e.g. 0:128,0:256, "
                         "or a mask file") from None
    if any(len(b) != 2 for b in box) or len(box) != ndim_spatial:
        raise UsageError(f"--region {text!r}: give one start:stop pair for each of the {ndim_spatial} spatial axes")
    return box


def _check_not_an_input(outputs: list[Path], inputs: list[Path]) -> None:
    resolved = {p.resolve() for p in inputs}
    for out in outputs:
        if out.resolve() in resolved:
            raise UsageError(f"{out} is one of the input files; choose another output so the input is not overwritten")


# ------------------------------------------------------------------ train


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    """One flag per engine setting, with the help, type and choices from the setting's metadata."""
    from .engine.config import PRESET_FIELDS, ModelConfig, TrainConfig, settings

    g = p.add_argument_group("training settings (defaults from the engine)")
    for s in settings(TrainConfig):
        if s.name not in TRAIN_OWN_FLAGS:
            _add_setting_flag(g, s)
    g = p.add_argument_group("model settings (override the preset; ignored with --resume)")
    for s in settings(ModelConfig):
        if s.name not in MODEL_FROM_DATA:
            _add_setting_flag(g, s, show_default=s.name not in PRESET_FIELDS)


def _add_setting_flag(group, s, show_default: bool = True) -> None:
    shown = s.shown_default() if show_default else ""
    help_text = s.help.replace("%", "%%") + (f" (default {shown})" if shown else " (default: from the preset)"
                                              if not show_default else "")
    if s.kind is bool:
        group.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction, default=None,
                           help=help_text)
    elif s.count is not None:
        group.add_argument(s.flag, dest=s.name, type=s.kind, nargs=s.count, default=None, metavar="N",
                           help=help_text)
    else:
        group.add_argument(s.flag, dest=s.name, type=s.kind, default=None, choices=s.choices, help=help_text)


def _setting_help(cls_name: str, name: str) -> str:
    from .engine import config

    found = {s.name: s for s in config.settings(getattr(config, cls_name))}[name]
    return found.help.replace("%", "%%")


def _collect(args, cls, skip: set[str]) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def cmd_train(args, say) -> int:
    from .engine import distributed
    from .engine.autocorrelation import noise_autocorrelation
    from .engine.config import ModelConfig, TrainConfig
    from .engine.model_file import load_model, save_model
    from .engine.train import Trainer

    ctx = distributed.init_from_env(args.device) if distributed.launched_by_torchrun() else None
    main_process = ctx is None or ctx.is_main
    if not main_process:
        def say(*_a, **_k):  # noqa: E306 - only the main process talks
            pass
    try:
        model = load_model(args.resume) if args.resume else None
        orientation = args.orientation
        if model is not None:
            trained = model.config.orientation
            if orientation not in ("auto", trained):
                raise UsageError(f"{args.resume} models noise along {trained!r}, not {orientation!r}; "
                                 f"drop --orientation or pass --orientation {trained}")
            orientation = trained
            dims = model.config.spatial_dims
        else:
            dims = args.spatial_dims or (3 if orientation == "z" else 2)
        files, axes = _read_images(args.images, args.axes, dims, say)
        out = Path(args.out)
        _check_not_an_input([out], [f.path for f in files])
        if orientation == "auto":
            ac = noise_autocorrelation(files[0].data, axes, spatial_dims=dims)
            orientation = ac.orientation
            say(f"orientation: {orientation} (from the noise autocorrelation of {files[0].path.name}: {ac.reason})")
        train_values = _collect(args, TrainConfig, TRAIN_OWN_FLAGS)
        steps = args.steps if (args.steps is not None or args.minutes is not None) else TrainConfig.max_steps
        with _settings_are_usage():
            cfg = TrainConfig(max_steps=steps, max_minutes=args.minutes, seed=args.seed, device=args.device,
                              **train_values)
        overrides = _collect(args, ModelConfig, MODEL_FROM_DATA)
        if model is not None and overrides:
            say("note: model settings are ignored when continuing a saved model: " + ", ".join(sorted(overrides)))
            overrides = {}
        with _settings_are_usage():
            trainer = Trainer([f.data for f in files], axes, model=model, preset=args.preset,
                              orientation=orientation, train_config=cfg, spatial_dims=dims, dist_context=ctx,
                              **overrides)
        bar = ProgressBar() if main_process else None
        interrupted = []

        def on_sigint(signum, frame):
            if interrupted:  # a second Ctrl-C: give up at once
                raise KeyboardInterrupt
            interrupted.append(True)
            trainer.stop()
            if bar:
                bar.message("stopping at the next step; the best model so far will be saved "
                            "(Ctrl-C again to quit without saving)")

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            for ev in trainer.fit():
                if bar is None:
                    continue
                if ev.kind in ("start", "warning"):
                    bar.message(ev.message)
                elif ev.kind in ("step", "validation"):
                    bar.update(ev.fraction, training_line(ev))
                elif ev.kind == "done":
                    bar.update(1.0, training_line(ev))
                    bar.close()
                    say(f"training ended: {ev.message}")
        finally:
            signal.signal(signal.SIGINT, previous)
        if main_process:
            save_model(trainer.model, out, extra={"axes": axes, "images": [str(f.path) for f in files]})
            best = trainer.history[-1].get("best_val_elbo") if trainer.history else None
            say(f"model written to {out}" + (f" (best validation ELBO {best:.4f})" if best is not None else ""))
        if ctx is not None:
            ctx.barrier()
    finally:
        if ctx is not None:
            distributed.shutdown()
    return 0


# ------------------------------------------------------------------ denoise


def _drive(gen, bar: ProgressBar, label: str):
    """Run an inference generator to its end with a progress bar; its return value."""
    started = time.monotonic()
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            bar.update(1.0, f"{label}: done")
            bar.close()
            return stop.value
        elapsed = time.monotonic() - started
        left = elapsed / ev.fraction * (1 - ev.fraction) if ev.fraction > 0 else None
        bar.update(ev.fraction, f"{label}: {ev.done}/{ev.total} tile passes, {format_duration(left)} left")


def std_note(info: dict) -> str:
    """What the std output is: a calibrated error bar, or only the samples' spread."""
    if info.get("calibrated"):
        from .engine.calibration import Calibration

        how = Calibration.from_dict(info).describe()
        return f"the std is calibrated ({how}, fitted on {info.get('fitted_on') or 'a reference'})"
    return ("the std is the posterior samples' spread, not calibrated as an error bar "
            "(napari-cosdd calibrate fits it against a reference image)")


def cmd_calibrate(args, say) -> int:
    from .engine.data import InputError
    from .engine.inference import calibrate_iter
    from .engine.model_file import load_model, save_model

    out = Path(args.out)
    model_path = Path(args.model)
    if out.resolve() == model_path.resolve():
        raise UsageError(f"--out {out} is the model being calibrated; write the calibrated model to another file")
    model = load_model(model_path)
    image = _read_each([args.image], args.axes, model.config.spatial_dims, say)[0]
    _check_not_an_input([out], [image.path])
    reference = mask = None
    if args.reference:
        ref = _read_each([args.reference], image.axes, model.config.spatial_dims, say)[0]
        _check_not_an_input([out], [ref.path])
        reference = ref.data
    if args.background:
        from .engine.io import expand_paths, read_image

        mask = read_image(expand_paths([args.background])[0], None).data != 0
    if reference is None and mask is None:
        raise UsageError("give --reference (a low-noise image of the same field) or --background (a mask of "
                         "flat background), or both")
    try:
        report = _drive(calibrate_iter(model, image.data, image.axes, reference=reference, background=mask,
                                       n_samples=args.samples, match=args.match, tile=args.tile,
                                       device=args.device, seed=args.seed), ProgressBar(), image.path.name)
    except ValueError as err:  # shapes that do not fit, too few pixels: about the data given
        raise InputError(str(err)) from None
    say(f"calibration on {report.calibration.pixels} pixels: {report.message}")
    for c, (before, after) in enumerate(zip(report.before, report.after)):
        say(("" if len(report.before) == 1 else f"channel {c}: ") + "predicted std (RMV) against the real "
            "error (RMSE), per bin, after calibration:")
        for rmv, rmse in zip(after.rmv, after.rmse):
            say(f"  RMV {rmv:10.4g}   RMSE {rmse:10.4g}")
    model.calibration = report.calibration
    model.calibration.fitted_on += f" ({image.path.name})"
    save_model(model, out)
    say(f"calibrated model written to {out}; its std outputs are now calibrated error bars")
    return 0


def cmd_export(args, say) -> int:
    from .engine.export import export_bioimageio
    from .engine.model_file import load_model

    out = Path(args.out)
    if out.suffix.lower() != ".zip":
        raise UsageError(f"{out}: a bioimage.io model is a .zip file; give OUT ending in .zip")
    model = load_model(args.model)
    image = _read_each([args.image], args.axes, model.config.spatial_dims, say)[0]
    _check_not_an_input([out], [Path(args.model), image.path])
    path = export_bioimageio(model, out, image.data, image.axes, name=args.name, authors=args.author,
                             license=args.license)
    say(f"wrote {path}: the Direct Denoiser as a bioimage.io model (TorchScript and PyTorch weights, "
        "normalisation as pre- and postprocessing, test images from " + image.path.name + ")")
    return 0


def cmd_denoise(args, say) -> int:
    """Denoise each file in turn, frame by frame: frames are read as they are needed (large files are
    memory-mapped or read page by page) and each finished frame is written into the output files, so the
    memory needed is that of a frame, whatever the length of the batch or of a time-lapse. Files whose
    outputs are all there are skipped (a stopped batch resumes); a file that cannot be read or denoised is
    reported and skipped; the status says whether all succeeded."""
    from .engine.data import InputError
    from .engine.inference import denoise_iter
    from .engine.io import default_axes, expand_paths, image_stem, read_image
    from .engine.model_file import load_model
    from .engine.stores import store_for

    if args.samples < 1:
        raise UsageError("--samples must be at least 1")
    model = load_model(args.model)
    earlier = []
    paths = expand_paths(args.images, earlier)
    if earlier:
        say(f"left out {len(earlier)} earlier output(s) of napari-cosdd (*_cosdd_*) found with the inputs")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for the results")
    names = ["direct"] if args.method == "direct" else (
        ["mean"] + (["variance", "std"] if args.variance else []) + (["median"] if args.median else [])
        + (["samples"] if args.keep_samples else []))
    fmt = args.format
    planned = {p: {n: store_for(fmt, out_dir, image_stem(p)).path_for(n) for n in names} for p in paths}
    stems = [image_stem(p) for p in paths]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise UsageError(f"several inputs are named {clash[0]}.*: their outputs would overwrite each other; "
                         "denoise them into separate --out folders")
    _check_not_an_input([o for d in planned.values() for o in d.values()], paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed, done, skipped = [], 0, 0
    for k, path in enumerate(paths, 1):
        label = f"[{k}/{len(paths)}] {path.name}"
        outputs = planned[path]
        if not args.overwrite and all(o.exists() for o in outputs.values()):
            say(f"{label}: outputs already there, skipped (--overwrite to redo)")
            skipped += 1
            continue
        try:
            f = read_image(path, args.axes)
            if f.axes is None:
                f.axes = default_axes(f.data.ndim, model.config.spatial_dims)
                say(f"{label}: axes not given and not in the file: assuming {f.axes!r} (pass --axes to change it)")
            store = store_for(fmt, out_dir, image_stem(path), like=f)
            result = _drive(denoise_iter(model, f.data, f.axes, method=args.method, n_samples=args.samples,
                                         variance=args.variance, median=args.median,
                                         keep_samples=args.keep_samples, tile=args.tile, device=args.device,
                                         bf16=args.bf16, seed=args.seed, out=store), ProgressBar(), label)
        except (InputError, ValueError, OSError) as err:  # this file's problem: say it, go on with the next
            failed.append(path.name)
            say(f"{label}: skipped, {err}")
            continue
        if result.check is not None:
            say(("" if result.check.ok else "WARNING: ") + f"{label}: {result.check.message}")
        if "std" in result.info:
            say(f"{label}: " + std_note(result.info["std"]))
        for out in outputs.values():
            say(f"wrote {out}")
        done += 1
    summary = f"{done} file(s) denoised" + (f", {skipped} already done" if skipped else "")
    if failed:
        raise InputError(f"{summary}; {len(failed)} of {len(paths)} could not be denoised: " + ", ".join(failed))
    say(summary)
    return 0


# ------------------------------------------------------------------ autocorr and check-noise


def cmd_autocorr(args, say) -> int:
    from .engine.autocorrelation import noise_autocorrelation
    from .engine.io import write_tiff

    dims = args.spatial_dims or 2
    files, axes = _read_images([args.image], args.axes, dims, say)
    f = files[0]
    if args.spatial_dims is None and "Z" in axes:
        dims = 3
    denoised = None
    if args.denoised:
        denoised = _read_images([args.denoised], axes, dims, lambda *_: None)[0][0].data
    region = _parse_region(args.region, dims)
    result = noise_autocorrelation(f.data, axes, region=region, denoised=denoised, max_lag=args.max_lag,
                                   spatial_dims=dims)
    print(result.summary(profile_lags=args.max_lag))
    if args.out:
        out = Path(args.out)
        _check_not_an_input([out], [f.path])
        write_tiff(out, result.autocorrelation, result.axes)
        say(f"wrote the autocorrelation map ({'x'.join(map(str, result.autocorrelation.shape))}, lag 0 at the "
            f"centre) to {out}")
    return 0


def cmd_check_noise(args, say) -> int:
    from .engine.io import write_tiff
    from .engine.model_file import load_model
    from .engine.noise_check import check_noise

    model = load_model(args.model)
    files, axes = _read_images([args.image], args.axes, model.config.spatial_dims, say)
    f = files[0]
    out = Path(args.out) if args.out else Path(f"{f.path.stem}_cosdd_generated.tif")
    _check_not_an_input([out], [f.path])
    result = check_noise(model, f.data, axes, device=args.device, max_side=args.max_side, seed=args.seed)
    print(result.summary())
    if result.generated.shape[0] == 1:
        write_tiff(out, result.generated[0], result.spatial_axes, like=f)
    else:
        write_tiff(out, result.generated, "C" + result.spatial_axes, like=f)
    say(f"wrote the generated noisy image to {out}")
    return 0


# ------------------------------------------------------------------ demo


def cmd_demo(args, say) -> int:
    from .synthetic import make_dataset

    if not args.headless:
        return _demo_gui(say)
    import numpy as np

    from .engine.config import TrainConfig
    from .engine.inference import denoise
    from .engine.io import write_tiff
    from .engine.model_file import save_model
    from .synthetic import psnr
    from .engine.train import Trainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"training on the built-in stripes sample for {args.minutes:g} minute(s)")
    noisy, _ = make_dataset("stripes", n_images=8, shape=(128, 128), seed=0)
    trainer = Trainer(noisy, "SYX", preset=args.preset, orientation="x",
                      train_config=TrainConfig(max_minutes=args.minutes, max_steps=None, device=args.device))
    bar = ProgressBar()
    for ev in trainer.fit():
        if ev.kind in ("step", "validation", "done"):
            bar.update(ev.fraction, training_line(ev))
    bar.close()
    save_model(trainer.model, out / "stripes.cosdd")
    test_noisy, test_clean = make_dataset("stripes", n_images=2, shape=(256, 256), seed=100)
    direct = denoise(trainer.model, test_noisy, "SYX", method="direct", device=args.device).direct
    sampled = denoise(trainer.model, test_noisy, "SYX", method="sample", n_samples=20, device=args.device)
    for name, arr in [("noisy", test_noisy), ("clean", test_clean), ("direct", direct),
                      ("mean20", sampled.mean), ("std20", sampled.std)]:
        write_tiff(out / f"{name}.tif", arr, "TYX")

    def score(est):
        return float(np.mean([psnr(c, e) for c, e in zip(test_clean, est)]))

    print(f"PSNR noisy {score(test_noisy):.2f} dB | direct {score(direct):.2f} dB | "
          f"mean of 20 samples {score(sampled.mean):.2f} dB  (TIFFs and model in {out}/)")
    return 0


def _demo_gui(say, block: bool = True):
    """napari with the stripes sample and the three widgets docked; returns the viewer when not blocking."""
    try:
        import napari
    except ImportError as err:  # pragma: no cover - napari is a dependency
        raise UsageError(f"napari cannot be imported ({err}); run 'napari-cosdd demo --headless'") from None

    viewer = napari.Viewer(title="napari-cosdd demo")
    viewer.open_sample("napari-cosdd", "stripes")
    for widget in ("Noise", "Train", "Denoise"):
        viewer.window.add_plugin_dock_widget("napari-cosdd", widget)
    say("napari-cosdd demo: the stripes sample is open; try Noise > Compute, then Denoise with the shipped "
        "model, or Train")
    if not block:
        return viewer
    napari.run()
    return 0


# ------------------------------------------------------------------ the parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train COSDD on noisy images alone and denoise with it.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    p.epilog = (f"exit status: 0 done, {EXIT_DATA} bad data or model file, {EXIT_USAGE} usage mistake, "
                f"{EXIT_UNEXPECTED} unexpected error (run again with --debug to see where)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model on noisy images",
                       description="Train COSDD on noisy images. Under torchrun, trains on several processes "
                                   "(DistributedDataParallel); only the first writes the model and the progress.")
    t.add_argument("images", nargs="+", metavar="IMAGE", help="TIFF or .npy files, or glob patterns")
    t.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.cosdd)")
    t.add_argument("--axes", help="axes of the images over S,T,C,Z,Y,X (default: from the file, else assumed)")
    t.add_argument("--orientation", default="auto", choices=["auto", "x", "y", "z", "none"],
                   help=_setting_help("ModelConfig", "orientation") + " auto (the default) picks it from the "
                        "noise autocorrelation.")
    t.add_argument("--preset", default=None, help="network size: tiny, cpu, small, default, large "
                                                    "(default: cpu, on a CPU and on a GPU)")
    t.add_argument("--spatial-dims", type=int, choices=[2, 3], default=None,
                   help=_setting_help("ModelConfig", "spatial_dims") + " Default 2, or 3 with --orientation z.")
    t.add_argument("--minutes", type=float, default=None, help=_setting_help("TrainConfig", "max_minutes"))
    t.add_argument("--steps", type=int, default=None,
                   help=_setting_help("TrainConfig", "max_steps") + " Default 2000 when no --minutes.")
    t.add_argument("--device", default="auto", help=_setting_help("TrainConfig", "device"))
    t.add_argument("--resume", metavar="MODEL", help="continue training this model file")
    t.add_argument("--seed", type=int, default=0, help=_setting_help("TrainConfig", "seed") + " Default 0.")
    _add_engine_flags(t)

    d = sub.add_parser("denoise", help="denoise images with a trained model",
                       description="Denoise images one file at a time and frame by frame; writes "
                                   "<name>_cosdd_<output>.tif (or .ome.zarr) files (float32, the input's axes "
                                   "and calibration) into --out, never over an input. Files larger than 1 GiB "
                                   "and OME-Zarr inputs are read as needed, never whole, and every output is "
                                   "written as its frames finish. Files whose outputs exist are skipped; a file "
                                   "that fails is reported and skipped, and the exit status is 1 if any failed.")
    d.add_argument("model", metavar="MODEL")
    d.add_argument("images", nargs="+", metavar="IMAGE",
                   help="TIFF, .npy or OME-Zarr files, glob patterns or folders (earlier *_cosdd_* outputs are "
                        "left out)")
    d.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    d.add_argument("--format", choices=["tiff", "ome-zarr"], default="tiff",
                   help="tiff (default): ImageJ TIFF, BigTIFF over 4 GB; ome-zarr: NGFF 0.4 images, also for "
                        "posterior samples of large inputs (TIFF holds the kept samples in memory)")
    d.add_argument("--overwrite", action="store_true",
                   help="denoise files whose outputs are already there (default: skip them, so a stopped "
                        "batch resumes)")
    d.add_argument("--axes", help="axes of the images (default: from the file, else assumed)")
    d.add_argument("--method", choices=["direct", "sample"], default="direct",
                   help="direct: one pass of the Direct Denoiser; sample: the mean of posterior samples")
    d.add_argument("--samples", type=int, default=100, help="posterior samples for --method sample")
    d.add_argument("--variance", action="store_true", help="also write the posterior variance and std")
    d.add_argument("--median", action="store_true", help="also write the pixel-wise posterior median")
    d.add_argument("--keep-samples", action="store_true", help="also write the samples (first axis)")
    d.add_argument("--tile", type=int, default=None, help=TILE_HELP)
    d.add_argument("--device", default="auto")
    d.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 on CUDA")
    d.add_argument("--seed", type=int, default=0)

    k = sub.add_parser("calibrate", help="make the posterior std an error bar, against a reference",
                       description="Fit the scale of the model's posterior std so that it matches the real error "
                                   "against a low-noise reference of the same field (a long exposure, an average "
                                   "of repeated frames) or on a mask of flat background; writes a new model "
                                   "file whose std outputs are calibrated.")
    k.add_argument("model", metavar="MODEL")
    k.add_argument("image", metavar="IMAGE", help="a noisy image the model is meant for")
    k.add_argument("--reference", metavar="IMAGE", help="low-noise image of the same field, same shape")
    k.add_argument("--background", metavar="MASK", help="image of the same size, non-zero on flat background")
    k.add_argument("--out", required=True, metavar="MODEL", help="calibrated model file to write")
    k.add_argument("--axes", help="axes of the image (default: from the file, else assumed)")
    k.add_argument("--samples", type=int, default=20, help="posterior samples (default 20)")
    k.add_argument("--match", choices=["affine", "none"], default="affine",
                   help="affine (default): map the reference's intensities onto the image's by a gain and "
                        "offset first (another exposure); none: take them as they are")
    k.add_argument("--tile", type=int, default=None, help=TILE_HELP)
    k.add_argument("--device", default="auto")
    k.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("export", help="export the Direct Denoiser as a bioimage.io model (zip)",
                       description="Write the model's Direct Denoiser as a bioimage.io model zip that Fiji "
                                   "(deepImageJ), ilastik, CAREamics and the BioImage Model Zoo can run: "
                                   "TorchScript and PyTorch state-dict weights, the normalisation as pre- and "
                                   "postprocessing, test input and output from --image. Sampling and the "
                                   "posterior variance stay in the .cosdd file.")
    e.add_argument("model", metavar="MODEL")
    e.add_argument("out", metavar="OUT.zip")
    e.add_argument("--image", required=True, metavar="IMAGE",
                   help="an image of the data the model is for: its test input and output come from it")
    e.add_argument("--axes", help="axes of the image (default: from the file, else assumed)")
    e.add_argument("--name", help="the model's name (default: COSDD Direct Denoiser)")
    e.add_argument("--author", action="append", help="an author's name (repeat for several)")
    e.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the weights (default CC-BY-4.0)")

    a = sub.add_parser("autocorr", help="noise autocorrelation and the suggested orientation",
                       description="Print the noise autocorrelation's suggested orientation, its evidence and "
                                   "the row and column profiles.")
    a.add_argument("image", metavar="IMAGE")
    a.add_argument("--axes")
    a.add_argument("--region", help="y0:y1,x0:x1 (a box over background), or a mask file; "
                                    "default: the lowest-signal tiles")
    a.add_argument("--denoised", metavar="IMAGE", help="a denoised version: use the residual as the noise")
    a.add_argument("--max-lag", type=int, default=25)
    a.add_argument("--spatial-dims", type=int, choices=[2, 3], default=None,
                   help="3: a 3-D autocorrelation over Z,Y,X (default when the axes have Z)")
    a.add_argument("--out", metavar="TIFF", help="also write the autocorrelation map")

    c = sub.add_parser("check-noise", help="compare the model's generated noise with the real noise",
                       description="Sample a new noisy image from the model's noise decoder and compare its "
                                   "autocorrelation and variance-versus-signal with the real noise.")
    c.add_argument("model", metavar="MODEL")
    c.add_argument("image", metavar="IMAGE")
    c.add_argument("--axes")
    c.add_argument("--out", metavar="TIFF", help="generated image (default ./<name>_cosdd_generated.tif)")
    c.add_argument("--max-side", type=int, default=256, help="side of the central crop used")
    c.add_argument("--device", default="auto")
    c.add_argument("--seed", type=int, default=0)

    m = sub.add_parser("demo", help="the built-in sample: in napari, or --headless",
                       description="Open napari with the built-in sample and the plugin's widgets, or with "
                                   "--headless train on the sample and write denoised results.")
    m.add_argument("--headless", action="store_true", help="no window: train, denoise, write TIFFs")
    m.add_argument("--minutes", type=float, default=1.0)
    m.add_argument("--preset", default=None)
    m.add_argument("--device", default="auto")
    m.add_argument("--out", default="cosdd_demo", help="folder for --headless results")
    p.commands = {"train": t, "denoise": d, "calibrate": k, "export": e, "autocorr": a, "check-noise": c,
                  "demo": m}
    return p


COMMANDS = {"train": cmd_train, "denoise": cmd_denoise, "calibrate": cmd_calibrate, "export": cmd_export,
            "autocorr": cmd_autocorr, "check-noise": cmd_check_noise, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line
    argv = [a for a in argv if a != "--debug"]

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def fail(status: int, text: str, usage: str | None = None) -> int:
        if usage:
            print(usage.rstrip(), file=sys.stderr)
        print(f"{PROG}: {text}", file=sys.stderr)
        return status

    args = None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return COMMANDS[args.command](args, say)
    except UsageError as err:
        usage = err.usage
        if usage is None:
            command = getattr(args, "command", None)
            usage = parser.commands[command].format_usage() if command in parser.commands else parser.format_usage()
        return fail(EXIT_USAGE, f"error: {err}", usage)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from .engine.data import AxesError, InputError
        from .engine.model_file import ModelFileError
        from .engine.train import TrainingError

        if debug:
            raise
        if isinstance(err, AxesError):
            command = getattr(args, "command", None)
            return fail(EXIT_USAGE, f"error: {err}", parser.commands[command].format_usage() if command else None)
        if isinstance(err, TrainingError):
            return fail(EXIT_DATA, f"training failed: {err}")
        if isinstance(err, (InputError, ModelFileError, ValueError, OSError)):
            return fail(EXIT_DATA, f"error: {err}")
        return fail(EXIT_UNEXPECTED, f"unexpected error ({type(err).__name__}: {err}); this is a bug: please "
                                     f"report it, with the output of the same command run with --debug")


if __name__ == "__main__":
    sys.exit(main())
