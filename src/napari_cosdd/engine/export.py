"""Export the Direct Denoiser as a bioimage.io model (a zip that Fiji/deepImageJ, ilastik, CAREamics and the
BioImage Model Zoo can run).

Only the one-pass part travels: sampling needs the whole COSDD model and stays in our own model file.
The zip holds the network twice, as TorchScript and as a ``pytorch_state_dict`` with a torch-only
architecture file (this package's blocks and Direct Denoiser sources, nothing else imported); the
model's normalisation is declared as the spec's preprocessing (``fixed_zero_mean_unit_variance``) and
postprocessing (``scale_linear``), so the network inside sees exactly what it saw in training. The test
input is a crop of the user's own data and the test output is what this model makes of it.

No bioimage.io library is needed to write the zip: rdf.yaml is written as JSON (which is YAML). The
tests validate it with bioimageio.core's own model test.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .data import InputError
from .inference import InferenceEvent, check_model_input
from .nets import blocks, direct_denoiser
from .nets.direct_denoiser import DirectDenoiser
from .nets.model import COSDD
from .progress import run_to_end

FORMAT_VERSION = "0.5.4"  # read by the Model Zoo's tools since 2024; newer libraries upgrade it on load
ARCHITECTURE_FILE = "cosdd_direct_denoiser.py"
TEST_SIDE = 256
CITATIONS = [
    {"text": "Salmon B. and Krull A. Towards structured noise models for unsupervised denoising (COSDD). "
             "WACV 2025.", "url": "https://arxiv.org/abs/2310.07887"},
    {"text": "Salmon B. and Krull A. Direct unsupervised denoising. ICCV Workshops 2023.",
     "url": "https://arxiv.org/abs/2310.18116"},
]


def architecture_source() -> str:
    """A torch-only Python file that defines `DirectDenoiser`: this package's blocks and Direct Denoiser,
    joined, without their package imports."""
    parts = []
    for module in (blocks, direct_denoiser):
        text = inspect.getsource(module)
        text = re.sub(r"^from __future__ import annotations\n", "", text, flags=re.M)
        text = re.sub(r"^from \.\S* import .*\n", "", text, flags=re.M)
        parts.append(text.strip() + "\n")
    header = ('"""The Direct Denoiser of napari-cosdd (a U-Net giving the posterior mean of COSDD in one pass), '
              'for\nbioimage.io. Generated from napari_cosdd.engine.nets (blocks.py, direct_denoiser.py); needs '
              'only torch."""\n\nfrom __future__ import annotations\n\n')
    return header + "\n\n".join(parts)


def _test_input(model: COSDD, image: np.ndarray, axes: str) -> np.ndarray:
    """A central crop of the first plane of the user's image: (1, C, *spatial), float32, in image units."""
    layout = check_model_input(model, image, axes)
    stack = layout.to_engine(np.asarray(image))
    m = model.config.size_multiple
    index = [slice(0, 1), slice(None)]
    for s in stack.shape[2:]:
        side = min(s, TEST_SIDE) // m * m
        if side < m:
            raise InputError(f"the image is smaller than {m} pixels along an axis; give a larger example image")
        start = (s - side) // 2
        index.append(slice(start, start + side))
    return np.ascontiguousarray(stack[tuple(index)], dtype=np.float32)


def _cover(noisy: np.ndarray, denoised: np.ndarray) -> bytes:
    """A PNG of the test input beside its denoised output (first channel, middle plane for 3-D)."""
    import imageio.v3 as iio

    def plane(a: np.ndarray) -> np.ndarray:
        a = a[0, 0]
        return a[a.shape[0] // 2] if a.ndim == 3 else a

    left, right = plane(noisy), plane(denoised)
    low, high = np.percentile(left, (0.5, 99.5))
    scale = 255.0 / max(float(high - low), 1e-12)
    gap = np.full((left.shape[0], 8), 255.0)
    picture = np.concatenate([(left - low) * scale, gap, (right - low) * scale], axis=1)
    buffer = io.BytesIO()
    iio.imwrite(buffer, np.clip(picture, 0, 255).astype(np.uint8), extension=".png")
    return buffer.getvalue()


def _tiff_bytes(array: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


def _axes(dims: int, channels: int, multiple: int, reference: str | None = None, halo: int = 0,
          smallest: int = 0) -> list[dict]:
    out: list[dict] = [{"type": "batch"},
                       {"type": "channel", "channel_names": [f"channel{c}" for c in range(channels)]}]
    for name in ("z", "y", "x")[3 - dims:]:
        if reference is None:
            out.append({"type": "space", "id": name, "size": {"min": max(smallest, multiple), "step": multiple}})
        else:
            out.append({"type": "space", "id": name, "size": {"tensor_id": reference, "axis_id": name},
                        "halo": halo})
    return out


def export_bioimageio(model: COSDD, path: str | os.PathLike, image: np.ndarray, axes: str, **kwargs) -> Path:
    """Write the Direct Denoiser of `model` as a bioimage.io model zip at `path` (see export_bioimageio_iter)."""
    return run_to_end(export_bioimageio_iter(model, path, image, axes, **kwargs))


def export_bioimageio_iter(model: COSDD, path: str | os.PathLike, image: np.ndarray, axes: str,
                           name: str | None = None, description: str | None = None,
                           authors: list[str] | None = None, license: str = "CC-BY-4.0"
                           ) -> Iterator[InferenceEvent]:
    """Write the Direct Denoiser of `model` as a bioimage.io model zip at `path`; a generator of progress
    events that returns the path written (closing it before the end writes nothing).

    `image` (with `axes`) is an example of the data the model is for: a crop of its first plane becomes
    the test input, and the model's output on it the test output.
    """
    if model.direct_denoiser is None:
        raise InputError("this model has no Direct Denoiser, and only the Direct Denoiser can be exported")
    config = model.config
    dims, channels, multiple = config.spatial_dims, config.in_channels, config.size_multiple
    test_in = _test_input(model, image, axes)
    yield InferenceEvent(0, 2, "running and tracing the Direct Denoiser on the test input")
    net = DirectDenoiser(**DirectDenoiser.arguments(config))
    net.load_state_dict({k: v.detach().cpu().clone() for k, v in model.direct_denoiser.state_dict().items()})
    net.eval()
    mean = model.data_mean.detach().cpu().reshape((1, -1) + (1,) * dims)
    std = model.data_std.detach().cpu().reshape((1, -1) + (1,) * dims)
    with torch.no_grad():
        x = (torch.from_numpy(test_in) - mean) / std
        test_out = (net(x) * std + mean).numpy().astype(np.float32)
        traced = torch.jit.trace(net, x)
    halo = min(32, multiple * 2)
    smallest = multiple * (4 * halo // multiple)  # a tile must be well over twice the halo
    stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    title = name or "COSDD Direct Denoiser"
    preprocessing = {"id": "fixed_zero_mean_unit_variance", "kwargs": {
        **({"axis": "channel", "mean": [float(v) for v in model.data_mean], "std": [float(v) for v in model.data_std]}
           if channels > 1 else {"mean": float(model.data_mean[0]), "std": float(model.data_std[0])})}}
    postprocessing = {"id": "scale_linear", "kwargs": {
        **({"axis": "channel", "gain": [float(v) for v in model.data_std],
            "offset": [float(v) for v in model.data_mean]}
           if channels > 1 else {"gain": float(model.data_std[0]), "offset": float(model.data_mean[0])})}}
    rdf = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": title,
        "description": description or (
            f"Direct Denoiser of a COSDD model trained with napari-cosdd on noise correlated along "
            f"{config.orientation} ({'pixel-independent' if config.orientation == 'none' else 'one axis'}): "
            "the posterior mean of the clean image in one pass."),
        "authors": [{"name": a} for a in (authors or ["napari-cosdd user"])],
        "cite": CITATIONS,
        "license": license,
        "tags": ["denoising", "self-supervised", "cosdd", "correlated-noise", f"{dims}d", "pytorch"],
        "documentation": "README.md",
        "covers": ["cover.png"],
        "timestamp": stamp,
        "inputs": [{
            "id": "raw", "description": "noisy image, in the units of the training data",
            "axes": _axes(dims, channels, multiple, smallest=smallest),
            "test_tensor": {"source": "test_input.npy"},
            "sample_tensor": {"source": "sample_input.tif"},
            "data": {"type": "float32"},
            "preprocessing": [preprocessing],
        }],
        "outputs": [{
            "id": "denoised", "description": "posterior mean (MMSE estimate) of the clean image",
            "axes": _axes(dims, channels, multiple, reference="raw", halo=halo),
            "test_tensor": {"source": "test_output.npy"},
            "sample_tensor": {"source": "sample_output.tif"},
            "data": {"type": "float32"},
            "postprocessing": [postprocessing],
        }],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt",
                "architecture": {"source": ARCHITECTURE_FILE, "callable": "DirectDenoiser",
                                 "kwargs": DirectDenoiser.arguments(config)},
                "pytorch_version": torch.__version__.split("+")[0],
            },
            "torchscript": {"source": "weights_torchscript.pt", "pytorch_version": torch.__version__.split("+")[0],
                            "parent": "pytorch_state_dict"},
        },
        "config": {"napari_cosdd": {"model_config": config.to_dict(), "orientation": config.orientation,
                                    "tile_multiple": multiple, "halo": halo}},
    }
    readme = _readme(model, title, halo)
    yield InferenceEvent(1, 2, "writing the zip")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("rdf.yaml", json.dumps(rdf, indent=2))
            zf.writestr("README.md", readme)
            zf.writestr(ARCHITECTURE_FILE, architecture_source())
            for entry, array in (("test_input.npy", test_in), ("test_output.npy", test_out)):
                buffer = io.BytesIO()
                np.save(buffer, array)
                zf.writestr(entry, buffer.getvalue())
            buffer = io.BytesIO()
            torch.save(net.state_dict(), buffer)
            zf.writestr("weights.pt", buffer.getvalue())
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            zf.writestr("weights_torchscript.pt", buffer.getvalue())
            zf.writestr("cover.png", _cover(test_in, test_out))
            for entry, array in (("sample_input.tif", test_in), ("sample_output.tif", test_out)):
                zf.writestr(entry, _tiff_bytes(array[0, 0]))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _readme(model: COSDD, title: str, halo: int) -> str:
    config = model.config
    steps = sum(h.get("steps", 0) for h in getattr(model, "history", []))
    return f"""# {title}

The Direct Denoiser of a COSDD model (napari-cosdd), trained from noisy images alone: a U-Net that
gives the posterior mean of the clean image in one pass.

- Noise: correlated along {config.orientation}; signal-dependent.
- Network: {config.levels} levels, {config.features} features, {config.spatial_dims}-D; trained {steps} steps.
- Input: the raw noisy image in the units of the training data. The normalisation the network was
  trained with is declared as preprocessing (zero mean, unit variance with fixed, per-channel values)
  and postprocessing (the inverse), so give the raw image.
- Tiles: each spatial side a multiple of {config.size_multiple}; a halo of {halo} pixels per side avoids
  seams.
- Only the one-pass denoiser is exported. Posterior samples, their variance and the noise model need
  the full model file (`.cosdd`) in napari-cosdd.

## Validation

The test input is a crop of the data this model was exported with, and the test output is what the
model made of it at export (the same network as these weights, in float32 on the CPU). How COSDD and
this implementation compare with the authors' reference on real images with simulated noise is in
napari-cosdd's docs/benchmarks.md. Check the output on your own data: the Direct Denoiser gives the
mean of the clean images that fit the noisy one, which is smoother than any single one of them.

Method: Salmon and Krull, COSDD (WACV 2025, arXiv:2310.07887) and Direct Denoiser (ICCV-W 2023,
arXiv:2310.18116). Made with napari-cosdd.
"""
