"""The napari sample images and the shipped pretrained model, without Qt or a viewer.

The samples are a user's first contact with the plugin: they must be the same every time, carry the
metadata the widgets read, keep the ground truth out of the way, and the shipped model must really
denoise the stripes sample, which it was not trained on.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_cosdd import _sample_data as S
from napari_cosdd.synthetic import psnr

SAMPLES = {
    # function: (layer name prefix, shape, noise, orientation, axes)
    S.stripes_sample: ("stripes", (512, 512), "stripes", "x", "YX"),
    S.checkerboard_sample: ("checkerboard", (512, 512), "checkerboard", "y", "YX"),
    S.camera_sample: ("camera", (512, 512), "camera", "x", "YX"),
    S.stripes_stack_sample: ("stripes stack", (16, 128, 128), "stripes", "x", "ZYX"),
}


@pytest.fixture(scope="module")
def layers():
    """Every sample's layers, made once for the module."""
    return {fn: fn() for fn in SAMPLES}


@pytest.mark.parametrize("fn", list(SAMPLES), ids=lambda fn: fn.__name__)
def test_sample_layers(layers, fn):
    """Two image layers, the hidden ground truth then the noisy one (so napari shows and selects the
    noisy layer on top), with the documented names, shapes and metadata."""
    prefix, shape, noise, orientation, axes = SAMPLES[fn]
    result = layers[fn]
    assert isinstance(result, list) and len(result) == 2
    (clean, clean_kw, clean_type), (noisy, noisy_kw, noisy_type) = result
    assert noisy_type == clean_type == "image"
    assert noisy_kw["name"] == f"{prefix} (noisy)"
    assert clean_kw["name"] == f"{prefix} (ground truth)"
    assert clean_kw["visible"] is False
    assert noisy_kw.get("visible", True) is True
    assert noisy_kw["metadata"] == {"cosdd_sample": noise, "orientation": orientation, "axes": axes}
    for data in (noisy, clean):
        assert isinstance(data, np.ndarray)
        assert data.shape == shape
        assert data.dtype == np.float32
        assert np.all(np.isfinite(data))
    assert not np.array_equal(noisy, clean)


@pytest.mark.parametrize("fn", list(SAMPLES), ids=lambda fn: fn.__name__)
def test_sample_is_seeded(layers, fn):
    """A second call gives the same arrays, bit for bit."""
    again = fn()
    for (first, _, _), (second, _, _) in zip(layers[fn], again):
        np.testing.assert_array_equal(first, second)


def test_samples_differ_from_each_other(layers):
    """Each 2-D sample has its own clean image, not one image with three noises."""
    cleans = [layers[fn][0][0] for fn in (S.stripes_sample, S.checkerboard_sample, S.camera_sample)]
    assert not np.array_equal(cleans[0], cleans[1])
    assert not np.array_equal(cleans[0], cleans[2])


def _lag1_correlation(residual: np.ndarray, axis: int) -> float:
    """Correlation of ``residual`` with itself shifted by one pixel along ``axis``."""
    r = residual.astype(np.float64) - residual.mean()
    a = np.take(r, np.arange(1, r.shape[axis]), axis=axis)
    b = np.take(r, np.arange(0, r.shape[axis] - 1), axis=axis)
    return float(np.mean(a * b) / np.mean(r * r))


def test_stripes_noise_runs_along_rows(layers):
    """The stripes sample's noise is correlated along rows (X), hardly along columns (Y)."""
    (clean, _, _), (noisy, _, _) = layers[S.stripes_sample]
    noise = noisy - clean
    along_rows = _lag1_correlation(noise, axis=-1)
    along_columns = _lag1_correlation(noise, axis=-2)
    assert along_rows > along_columns + 0.2, (along_rows, along_columns)
    assert abs(along_columns) < 0.05


def test_pretrained_model_path_missing_name():
    """An unknown model name raises FileNotFoundError naming the models that are shipped."""
    with pytest.raises(FileNotFoundError, match="stripes"):
        S.pretrained_model_path("no-such-model")


def test_pretrained_model_denoises_held_out_sample(layers):
    """The shipped stripes model loads, runs along X, and its Direct Denoiser clearly raises PSNR.

    The shipped file was made at commit 6064564 (scripts/make_pretrained_model.py, 4-level "cpu" preset,
    constant rates, 2051 steps in 8 min on a 2-core CPU): noisy 16.37 dB, direct 27.38 dB on the
    held-out stripes sample, a gain of 11.01 dB. The test asks for 8 dB: a broken or untrained model
    scores near 0, and the model shipped before it (6 levels, Adamax) scored 7.83 dB. A remake with
    the script at the default of 2026-12-06 made 600 steps on a slow host (+8.73 dB) and 1527 on a
    faster one (+10.82 dB), so the file was kept.
    """
    from napari_cosdd.engine.inference import denoise
    from napari_cosdd.engine.model_file import load_model

    path = S.pretrained_model_path()
    assert path.name == "stripes.cosdd"
    assert path.stat().st_size < 8 * 2**20
    model = load_model(path)
    assert model.config.orientation == "x"
    assert model.extra.get("script") == "scripts/make_pretrained_model.py"
    (clean, _, _), (noisy, _, _) = layers[S.stripes_sample]
    direct = denoise(model, noisy, "YX", method="direct", device="cpu").direct
    assert direct.shape == noisy.shape
    gain = psnr(clean, direct) - psnr(clean, noisy)
    assert gain > 8.0, gain


def test_import_loads_neither_torch_nor_qt():
    """napari imports the module to list samples: it must not pull in torch or a Qt binding."""
    code = (
        "import sys, napari_cosdd._sample_data; "
        "print('torch' in sys.modules, any(m.startswith(('PyQt','PySide','qtpy')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
