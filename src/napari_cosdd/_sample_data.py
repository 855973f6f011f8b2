"""Sample images for napari's File > Open Sample, and the path of the shipped pretrained model.

New users need an image with the kind of noise COSDD removes, and its ground truth to judge the
result, before they trust the plugin with their own data. The samples are drawn by the numpy-only
synthetic generator with fixed seeds, so they are the same on every machine and in every session.
napari imports this module to list the samples, so it loads neither Qt nor torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .synthetic import add_noise, clean_image

# (image seed, noise seed) of each sample. scripts/make_pretrained_model.py trains on other seeds,
# so that the stripes sample stays held out from the shipped model's training data.
SAMPLE_SEEDS = {
    "stripes": (11, 12),
    "checkerboard": (21, 22),
    "camera": (31, 32),
    "stripes stack": (41, 42),
}
SAMPLE_SHAPE = (512, 512)
STACK_SHAPE = (16, 128, 128)
# The axis along which each noise is correlated: the orientation COSDD's decoder must run along.
ORIENTATIONS = {"stripes": "x", "checkerboard": "y", "camera": "x"}

_PRETRAINED_DIR = Path(__file__).parent / "pretrained"
_PRETRAINED_SUFFIX = ".cosdd"


def make_sample(noise: str, shape=SAMPLE_SHAPE, image_seed: int = 0, noise_seed: int = 0):
    """A seeded ``"mixed"`` clean image and its noisy version, made the way the samples are.

    Parameters
    ----------
    noise : {"stripes", "checkerboard", "camera"}
        Noise kind, see `napari_cosdd.synthetic.add_noise`.
    shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    image_seed, noise_seed : int
        Seeds of the clean image and of the noise.

    Returns
    -------
    noisy, clean : numpy.ndarray
        Two float32 arrays of ``shape``.
    """
    clean = clean_image(shape, "mixed", image_seed)
    noisy = add_noise(clean, noise, noise_seed)
    return noisy.astype(np.float32, copy=False), clean.astype(np.float32, copy=False)


def _layers(key: str, noise: str, orientation: str, shape, axes: str) -> list[tuple]:
    """The noisy layer and the hidden ground-truth layer of one sample.

    Parameters
    ----------
    key : str
        Sample name: a key of `SAMPLE_SEEDS`, also the prefix of the layer names.
    noise : str
        Noise kind passed to `make_sample`.
    orientation : str
        Noise axis recorded in the metadata ("x" or "y").
    shape : tuple of int
        Image shape.
    axes : str
        Axis letters recorded in the metadata ("YX" or "ZYX").

    Returns
    -------
    list of tuple
        ``[(clean, clean_kwargs, "image"), (noisy, noisy_kwargs, "image")]``: the ground truth first,
        so that napari puts the noisy layer on top and selects it.
    """
    image_seed, noise_seed = SAMPLE_SEEDS[key]
    noisy, clean = make_sample(noise, shape, image_seed, noise_seed)
    metadata = {"cosdd_sample": noise, "orientation": orientation, "axes": axes}
    noisy_kwargs = {"name": f"{key} (noisy)", "metadata": metadata}
    clean_kwargs = {
        "name": f"{key} (ground truth)",
        "metadata": {**metadata, "ground_truth": True},
        "visible": False,
    }
    return [(clean, clean_kwargs, "image"), (noisy, noisy_kwargs, "image")]


def stripes_sample() -> list[tuple]:
    """512 x 512 image with shot noise, white noise and noise correlated along rows.

    Returns
    -------
    list of tuple
        napari LayerData tuples: "stripes (noisy)" (float32, metadata ``cosdd_sample="stripes"``,
        ``orientation="x"``, ``axes="YX"``) and the hidden "stripes (ground truth)".
    """
    return _layers("stripes", "stripes", ORIENTATIONS["stripes"], SAMPLE_SHAPE, "YX")


def checkerboard_sample() -> list[tuple]:
    """512 x 512 image with a row-alternating column pattern and white noise strongest in the dark.

    Returns
    -------
    list of tuple
        napari LayerData tuples: "checkerboard (noisy)" (float32, metadata
        ``cosdd_sample="checkerboard"``, ``orientation="y"``, ``axes="YX"``) and the hidden
        "checkerboard (ground truth)".
    """
    return _layers("checkerboard", "checkerboard", ORIENTATIONS["checkerboard"], SAMPLE_SHAPE, "YX")


def camera_sample() -> list[tuple]:
    """512 x 512 image with EMCCD-like noise: EM-gain shot noise, row offsets and read-out drift.

    Returns
    -------
    list of tuple
        napari LayerData tuples: "camera (noisy)" (float32, metadata ``cosdd_sample="camera"``,
        ``orientation="x"``, ``axes="YX"``) and the hidden "camera (ground truth)".
    """
    return _layers("camera", "camera", ORIENTATIONS["camera"], SAMPLE_SHAPE, "YX")


def stripes_stack_sample() -> list[tuple]:
    """16 x 128 x 128 (Z, Y, X) volume with stripes noise drawn independently in every plane.

    Returns
    -------
    list of tuple
        napari LayerData tuples: "stripes stack (noisy)" (float32, metadata
        ``cosdd_sample="stripes"``, ``orientation="x"``, ``axes="ZYX"``) and the hidden
        "stripes stack (ground truth)".
    """
    return _layers("stripes stack", "stripes", "x", STACK_SHAPE, "ZYX")


def pretrained_model_path(name: str = "stripes") -> Path:
    """Path of a model file shipped with the plugin.

    Parameters
    ----------
    name : str
        Model name: the file is ``pretrained/<name>.cosdd`` inside the package.

    Returns
    -------
    pathlib.Path
        The model file, readable with `napari_cosdd.engine.model_file.load_model`.

    Raises
    ------
    FileNotFoundError
        When no such model is shipped; the message lists those that are.
    """
    path = _PRETRAINED_DIR / f"{name}{_PRETRAINED_SUFFIX}"
    if not path.is_file():
        shipped = sorted(p.stem for p in _PRETRAINED_DIR.glob(f"*{_PRETRAINED_SUFFIX}"))
        raise FileNotFoundError(
            f"no pretrained model {name!r} in {_PRETRAINED_DIR} (shipped: {', '.join(shipped) or 'none'}); "
            "a source checkout makes the stripes model with scripts/make_pretrained_model.py"
        )
    return path
