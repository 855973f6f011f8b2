"""Model files: one file with config, weights, normalisation, training summary and version.

Files hold only tensors and plain Python values and are read with torch.load(weights_only=True),
so opening a model file cannot execute code.
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from .calibration import Calibration
from .config import ModelConfig
from .nets.model import COSDD

FORMAT = "napari-cosdd-model"
# 2: the networks follow the method's ladder VAE (merge blocks, 3x3 latent convolutions, AR blocks);
# files of format 1 hold the weights of the earlier, lighter networks and cannot be loaded into these.
# 3: the Direct Denoiser's normalisation is a setting (direct_norm); format 2 files all used BatchNorm.
FORMAT_VERSION = 3
OLDEST_READABLE = 2
# The model settings a file of an older format left out, with the value its networks were built with.
SETTINGS_ADDED = {3: {"direct_norm": "batch"}}


class ModelFileError(ValueError):
    """A file that is not a usable napari-cosdd model, with the reason."""


def _package_version() -> str:
    from .. import __version__

    return __version__


def _plain(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python: only types the safe loader accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value


def save_model(model: COSDD, path: str | os.PathLike, extra: dict | None = None,
               training_state: bool = True) -> Path:
    """Write the model to `path` atomically (a partly written file never replaces a good one).

    With training_state (the default), the optimisers' and the schedule's state of the last training
    run go in as well, so that training can resume where it stopped; they about triple the file's size,
    and a file meant only for denoising can leave them out.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_config": _plain(model.config.to_dict()),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "history": _plain(getattr(model, "history", [])),
        "extra": _plain(extra or {}),
    }
    calibration = getattr(model, "calibration", None)
    if calibration is not None:
        payload["calibration"] = _plain(calibration.to_dict())
    state = getattr(model, "training_state", None)
    if training_state and state:
        payload["training_state"] = state
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        # mkstemp makes the file private (0600); give it the permissions a plain new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_model_file(path: str | os.PathLike) -> dict:
    """The raw contents of a model file, checked; ModelFileError when it is not one."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; choose a model file (.cosdd)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFileError(
            f"{path} holds more than plain weights and was not opened, so that no code in it could run"
        ) from err
    except Exception as err:  # torch raises many types for files that are not its archives
        raise ModelFileError(f"{path} is not a readable model file (corrupted or another format): {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a napari-cosdd model file")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by napari-cosdd {payload.get('package_version', '?')} in model format "
            f"{version}; this napari-cosdd ({_package_version()}) reads format {FORMAT_VERSION}. Upgrade napari-cosdd."
        )
    if version < OLDEST_READABLE:
        raise ModelFileError(
            f"{path} was made by napari-cosdd {payload.get('package_version', '?')} (model format {version}), "
            f"whose networks differ from this version's (format {FORMAT_VERSION}); train the model again on "
            "the same images with this version")
    if isinstance(payload.get("model_config"), dict):
        for added in range(version + 1, FORMAT_VERSION + 1):
            for name, value in SETTINGS_ADDED.get(added, {}).items():
                payload["model_config"].setdefault(name, value)
    return payload


def load_model(path: str | os.PathLike) -> COSDD:
    """Rebuild a model from its file (on the CPU, in eval mode)."""
    payload = read_model_file(path)
    try:
        config = ModelConfig.from_dict(payload["model_config"])
        model = COSDD(config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{path} does not match this version's model layout: {err}") from err
    model.calibration = None
    if payload.get("calibration") is not None:
        try:
            model.calibration = Calibration.from_dict(payload["calibration"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{path} holds an unreadable std calibration: {err}") from err
        if len(model.calibration.scales) != config.in_channels:
            raise ModelFileError(f"{path} holds a std calibration for {len(model.calibration.scales)} channels "
                                 f"but the model has {config.in_channels}")
    model.history = payload.get("history", [])
    model.extra = payload.get("extra", {})
    model.training_state = payload.get("training_state")
    model.package_version = payload.get("package_version")
    return model.eval()
