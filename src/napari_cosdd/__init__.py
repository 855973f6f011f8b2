"""napari-cosdd: remove signal-dependent, row- or column-correlated noise, trained from noisy data alone.

`import napari_cosdd` is light: it loads neither Qt nor napari, and torch only when an engine name is
used. napari finds the widgets through the plugin manifest.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "ModelConfig": "config", "TrainConfig": "config", "PRESETS": "config",
    "Trainer": "train", "TrainingEvent": "train", "TrainingError": "train", "train": "train",
    "denoise": "inference", "denoise_iter": "inference", "DenoiseResult": "inference",
    "generate_noisy": "inference", "generate_noisy_iter": "inference", "OutputCheck": "output_check",
    "check_output": "output_check", "guess_axes": "data",
    "save_model": "model_file", "load_model": "model_file", "ModelFileError": "model_file",
    "InputError": "data",
    "noise_autocorrelation": "autocorrelation", "NoiseAutocorrelation": "autocorrelation",
    "check_noise": "noise_check", "check_noise_iter": "noise_check",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module = importlib.import_module(f"napari_cosdd.engine.{_API[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'napari_cosdd' has no attribute {name!r}")
