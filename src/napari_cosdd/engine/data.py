"""Turning user arrays into training crops: axes, checks, normalisation, the split and the samplers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AXES_LETTERS = "STCZYX"


class InputError(ValueError):
    """Input that cannot be used, with a message that says what to do."""


class AxesError(InputError):
    """An axes string that does not fit the image: fixed by giving other axes."""


# ---------------------------------------------------------------- axes


@dataclass(frozen=True)
class Layout:
    """How an array with an axes string maps to the engine's (N, C, *spatial) layout."""

    axes: str
    shape: tuple[int, ...]
    spatial_dims: int

    @property
    def spatial_axes(self) -> str:
        return "ZYX" if self.spatial_dims == 3 else "YX"

    @property
    def sample_axes(self) -> str:
        return "".join(a for a in self.axes if a not in self.spatial_axes and a != "C")

    @property
    def order(self) -> list[int]:
        """Permutation of the input axes into (sample axes..., C, spatial axes...)."""
        wanted = self.sample_axes + ("C" if "C" in self.axes else "") + self.spatial_axes
        return [self.axes.index(a) for a in wanted]

    @property
    def n_channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in self.spatial_axes)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in self.sample_axes)

    def to_engine(self, array: np.ndarray) -> np.ndarray:
        """(N, C, *spatial) float32 view/copy of an input array."""
        return np.ascontiguousarray(self.engine_view(array), dtype=np.float32)

    def engine_view(self, array: np.ndarray) -> np.ndarray:
        """(N, C, *spatial) in the array's own dtype: a view where the axes allow it, so that work done
        frame by frame converts one frame at a time instead of copying the whole input to float32."""
        arr = np.transpose(array, self.order)
        n = int(np.prod(self.sample_shape)) if self.sample_axes else 1
        return arr.reshape((n, self.n_channels) + self.spatial_shape)

    # Frame by frame, for arrays of any kind (numpy, memory-mapped, zarr, dask): one engine frame (one
    # position of the sample axes) is read or written at a time, so an input larger than memory never
    # has to be loaded whole.

    @property
    def n_frames(self) -> int:
        return int(np.prod(self.sample_shape)) if self.sample_axes else 1

    def frame_index(self, i: int, spatial: tuple[slice, ...] | None = None) -> tuple:
        """Index of engine frame `i` (optionally only the region `spatial` of it, in the spatial axes'
        order) into an array with the input's axes."""
        at = dict(zip(self.sample_axes, np.unravel_index(i, self.sample_shape))) if self.sample_axes else {}
        region = dict(zip(self.spatial_axes, spatial)) if spatial is not None else {}
        return tuple(int(at[a]) if a in at else region.get(a, slice(None)) for a in self.axes)

    @property
    def frame_order(self) -> list[int]:
        """Permutation of the axes that remain in a frame (the input's, less the sample axes) into
        (C, *spatial)."""
        rest = [a for a in self.axes if a not in self.sample_axes]
        wanted = ("C" if "C" in self.axes else "") + self.spatial_axes
        return [rest.index(a) for a in wanted]

    def read_frame(self, array, i: int, spatial: tuple[slice, ...] | None = None,
                   leading: tuple = ()) -> np.ndarray:
        """Engine frame `i` of `array` (the input's axes, after any `leading` index): (*lead, C, *spatial),
        in the array's dtype, reading that frame (or region) only."""
        block = np.asarray(array[tuple(leading) + self.frame_index(i, spatial)])
        nl = block.ndim - len(self.frame_order)
        block = np.transpose(block, list(range(nl)) + [nl + k for k in self.frame_order])
        return block.reshape(block.shape[:nl] + (self.n_channels,) + block.shape[block.ndim - self.spatial_dims:])

    def write_frame(self, out, i: int, block: np.ndarray, spatial: tuple[slice, ...] | None = None,
                    leading: tuple = ()) -> None:
        """Inverse of read_frame: put a (*lead, C, *spatial) block into engine frame `i` of `out`."""
        nl = block.ndim - self.spatial_dims - 1
        if "C" not in self.axes:
            block = block.reshape(block.shape[:nl] + block.shape[nl + 1:])
        inverse = np.argsort(self.frame_order)
        out[tuple(leading) + self.frame_index(i, spatial)] = np.transpose(
            block, list(range(nl)) + [nl + int(k) for k in inverse])

    def from_engine(self, result: np.ndarray, leading: tuple[int, ...] = ()) -> np.ndarray:
        """Inverse of to_engine for a result shaped (*leading, N, C, *spatial): back to the input's axes,
        with any leading axes (e.g. posterior samples) kept in front."""
        nl = len(leading)
        permuted = tuple(self.shape[i] for i in self.order)
        out = result.reshape(leading + permuted)
        inverse = np.argsort(self.order)
        return np.transpose(out, tuple(range(nl)) + tuple(nl + i for i in inverse))


def normalise_axes(axes: str) -> str:
    return axes.strip().upper()


def make_layout(array: np.ndarray, axes: str, spatial_dims: int = 2) -> Layout:
    """Check an axes string against an array and return its layout (InputError when they disagree)."""
    axes = normalise_axes(axes)
    bad = sorted(set(axes) - set(AXES_LETTERS))
    if bad:
        raise AxesError(f"axes {axes!r} contain {bad}; use only the letters {AXES_LETTERS}")
    if len(set(axes)) != len(axes):
        raise AxesError(f"axes {axes!r} name an axis twice; each of {AXES_LETTERS} may appear once")
    if len(axes) != array.ndim:
        raise AxesError(
            f"axes {axes!r} name {len(axes)} axes but the image has {array.ndim} (shape {array.shape}); "
            f"give one letter per axis, e.g. {guess_axes(array.ndim)!r}"
        )
    needed = "ZYX" if spatial_dims == 3 else "YX"
    missing = [a for a in needed if a not in axes]
    if missing:
        raise AxesError(
            f"axes {axes!r} lack {''.join(missing)}; a {spatial_dims}-D model needs {needed} axes"
        )
    return Layout(axes, tuple(array.shape), spatial_dims)


#: napari axis labels (lower case) that name one of our axes.
_LABELS = {"t": "T", "time": "T", "frame": "T", "frames": "T", "z": "Z", "depth": "Z", "plane": "Z",
           "y": "Y", "x": "X", "c": "C", "channel": "C", "channels": "C", "s": "S", "sample": "S"}


def _axes_from_labels(labels, ndim: int) -> str | None:
    """Axes named by napari axis labels such as ('t', 'y', 'x'); None unless every label names a
    different axis and Y and X are among them (napari's default labels are numbers)."""
    if labels is None or len(labels) != ndim:
        return None
    axes = "".join(_LABELS.get(str(label).strip().lower(), "?") for label in labels)
    if "?" in axes or len(set(axes)) != ndim or not {"Y", "X"} <= set(axes):
        return None
    return axes


def guess_axes(ndim: int, spatial_dims: int = 2, file_axes: str | None = None, labels=None) -> str:
    """The axes of an array: the one guess that the API, the CLI and the widgets share.

    The first that exists: the file's own axes (TIFF/OME metadata), napari axis labels that name axes
    ('t', 'z', 'y', 'x', 'c', ...), then the rule: the last two axes are Y, X; with a 3-D model the one
    before is Z; every axis before those is a frame axis, T next to the image, S before it
    (2-D: YX; 3-D: TYX, or ZYX for a 3-D model; 4-D: TZYX; 5-D: STZYX). A channel axis is never
    assumed: napari keeps channels in separate layers, and a file with channels says so.
    """
    for named in (file_axes, _axes_from_labels(labels, ndim)):
        if isinstance(named, str) and len(named) == ndim:
            return normalise_axes(named)
    spatial = "ZYX" if spatial_dims == 3 else "YX"
    if ndim < len(spatial):
        return "YX"[-ndim:] if ndim else ""
    if spatial_dims == 3:
        frames = {0: "", 1: "T", 2: "ST"}.get(ndim - 3, "S" * (ndim - 4) + "T")
    else:
        frames = {0: "", 1: "T", 2: "TZ", 3: "STZ"}.get(ndim - 2, "S" * (ndim - 4) + "TZ")
    return frames + spatial


def in_memory(array) -> bool:
    """Whether an array is an ordinary in-memory numpy array; anything else (memory-mapped files, zarr,
    dask, tifffile stores) is read frame by frame and never whole."""
    return isinstance(array, np.ndarray) and not isinstance(array, np.memmap)


def check_dtype(array, name: str = "image") -> None:
    """The checks that need no pixel read: the dtype and the size (for inputs too large to read whole)."""
    dtype = np.dtype(array.dtype)
    if dtype == np.dtype(bool):
        raise InputError(f"{name} is a boolean mask, not an intensity image; choose the raw image")
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{name} is complex-valued; pass its magnitude or real part")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{name} has dtype {dtype}; use an integer or float image")
    if int(np.prod(array.shape)) == 0:
        raise InputError(f"{name} is empty")


def check_frame(frame: np.ndarray, where: str) -> None:
    """Pixel checks for one frame read from a large input (check_values' NaN rule, frame by frame)."""
    if np.issubdtype(frame.dtype, np.floating) and not np.isfinite(frame).all():
        bad = int(frame.size - np.isfinite(frame).sum())
        raise InputError(f"{where} has {bad} NaN or infinite pixels; replace them (e.g. with the median) first")


def check_values(array: np.ndarray, name: str = "image") -> None:
    """Reject dtypes and values the model cannot learn from."""
    if array.dtype == bool:
        raise InputError(f"{name} is a boolean mask, not an intensity image; choose the raw image")
    if np.iscomplexobj(array):
        raise InputError(f"{name} is complex-valued; pass its magnitude or real part")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{name} has dtype {array.dtype}; use an integer or float image")
    if array.size == 0:
        raise InputError(f"{name} is empty")
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - finite.sum())
            raise InputError(
                f"{name} has {bad} NaN or infinite pixels; replace them (e.g. with the median) before training"
            )
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise InputError(f"{name} is constant (every pixel is {lo}); there is nothing to learn from it")


def as_engine_images(images, axes: str, spatial_dims: int, max_bytes: float | None = None,
                     notes: list[str] | None = None) -> list[np.ndarray]:
    """One array or a list of arrays (sizes may differ) -> list of (C, *spatial) float32 images.

    Arrays of any kind are read frame by frame (numpy, memory-mapped, zarr, dask). When all frames
    together would take more than `max_bytes` as float32, an evenly spread sample of each array's frames
    is read instead, and a line saying so is added to `notes`.
    """
    arrays = list(images) if isinstance(images, (list, tuple)) else [images]
    if not arrays:
        raise InputError("no images were given")
    layouts = []
    channels = None
    for i, arr in enumerate(arrays):
        name = "the image" if len(arrays) == 1 else f"image {i + 1}"
        if in_memory(arr):
            check_values(arr, name)
        else:
            check_dtype(arr, name)
        layout = make_layout(arr, axes, spatial_dims)
        if channels is not None and layout.n_channels != channels:
            raise InputError(
                f"{name} has {layout.n_channels} channels but the first has {channels}; "
                "train on images with the same channels"
            )
        channels = layout.n_channels
        layouts.append((name, layout))
    frame_bytes = [4 * layout.n_channels * int(np.prod(layout.spatial_shape)) for _, layout in layouts]
    total = sum(b * layout.n_frames for b, (_, layout) in zip(frame_bytes, layouts))
    share = 1.0 if max_bytes is None or total <= max_bytes else max_bytes / total
    out: list[np.ndarray] = []
    read = 0
    for arr, (name, layout) in zip(arrays, layouts):
        n = layout.n_frames
        keep = n if share >= 1 else max(1, int(n * share))
        picks = np.unique(np.linspace(0, n - 1, keep).round().astype(int))
        for i in picks:
            frame = layout.read_frame(arr, int(i))
            if not in_memory(arr):
                check_frame(frame, f"{name}, frame {i}")
            out.append(np.ascontiguousarray(frame, dtype=np.float32))
        read += len(picks)
    if share < 1 and notes is not None:
        frames = sum(layout.n_frames for _, layout in layouts)
        notes.append(f"the input is {total / 1e9:.1f} GB as float32: training reads {read} of its {frames} frames, "
                     f"evenly spread ({sum(o.nbytes for o in out) / 1e9:.2f} GB; max_train_gb sets the limit)")
    return out


# ---------------------------------------------------------------- normalisation


def channel_stats(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over every pixel of every image (float64 sums)."""
    c = images[0].shape[0]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for img in images:
        flat = img.reshape(c, -1).astype(np.float64)
        total += flat.sum(1)
        total_sq += (flat * flat).sum(1)
        count += flat.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0))
    if np.any(std == 0):
        raise InputError("a channel is constant over all images; there is nothing to learn from it")
    return mean.astype(np.float32), std.astype(np.float32)


def clip_outliers(images: list[np.ndarray], percentiles: tuple[float, float]
                  ) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """Clip each channel to its own percentiles, pooled over all images; the images keep their dtype.

    Returns the clipped images and the (low, high) limits of each channel."""
    low_p, high_p = (float(p) for p in percentiles)
    if not 0 <= low_p < high_p <= 100:
        raise InputError(f"clip_outliers needs two percentiles with 0 <= low < high <= 100, got {percentiles}")
    c = images[0].shape[0]
    limits = []
    for ch in range(c):
        pooled = np.concatenate([img[ch].ravel() for img in images])
        lo, hi = np.percentile(pooled, [low_p, high_p])
        limits.append((float(lo), float(hi)))
    clipped = []
    for img in images:
        out = np.empty_like(img)
        for ch, (lo, hi) in enumerate(limits):
            np.clip(img[ch], img.dtype.type(lo), img.dtype.type(hi), out=out[ch])
        clipped.append(out)
    return clipped, limits


# ---------------------------------------------------------------- crop size and split


def fit_crop(images: list[np.ndarray], crop_size: int, multiple: int = 1) -> tuple[tuple[int, ...], str | None]:
    """Crop shape for the data: the requested side on every spatial axis, shrunk to the smallest image
    (rounded down to `multiple`). Returns the shape and a message when it had to shrink."""
    dims = images[0].ndim - 1
    smallest = [min(img.shape[1 + a] for img in images) for a in range(dims)]
    shape = []
    for side in smallest:
        s = min(crop_size, side)
        s = (s // multiple) * multiple
        shape.append(s)
    if min(shape) < max(8, multiple):
        raise InputError(
            f"the smallest image is {tuple(smallest)} pixels, too small for training "
            f"(need at least {max(8, multiple)} pixels per side for this model); use larger images"
        )
    msg = None
    if any(s != crop_size for s in shape):
        msg = f"crop shrunk from {crop_size} to {tuple(shape)} to fit the smallest image {tuple(smallest)}"
    return tuple(shape), msg


@dataclass
class Split:
    train: list[np.ndarray]
    val: list[np.ndarray]
    how: str


def split_train_val(images: list[np.ndarray], val_fraction: float, crop: tuple[int, ...],
                    seed: int | None) -> Split:
    """Seeded split with no image or tile in both sets.

    With enough images, whole images go to validation. Otherwise each image is cut along its longest
    spatial axis into a training part and a validation band at least one crop long.
    """
    rng = np.random.default_rng(seed)
    n = len(images)
    n_val = int(round(n * val_fraction))

    def band_fits(img: np.ndarray) -> bool:
        spatial = img.shape[1:]
        axis = int(np.argmax(spatial))
        return spatial[axis] - max(crop[axis], int(math.ceil(spatial[axis] * val_fraction))) >= crop[axis]

    if n_val == 0 and n >= 2 and not all(band_fits(img) for img in images):
        n_val = 1  # images too small to cut a band from: hold out a whole one instead
    if n_val >= 1 and n - n_val >= 1:
        order = rng.permutation(n)
        val_idx = set(order[:n_val].tolist())
        train = [images[i] for i in range(n) if i not in val_idx]
        val = [images[i] for i in sorted(val_idx)]
        return Split(train, val, f"{len(train)} training and {len(val)} validation images")
    train, val = [], []
    for img in images:
        spatial = img.shape[1:]
        axis = int(np.argmax(spatial))
        length = spatial[axis]
        band = max(crop[axis], int(math.ceil(length * val_fraction)))
        if length - band < crop[axis]:
            raise InputError(
                f"an image of {tuple(spatial)} pixels is too small to hold out a validation band and still "
                f"train on {crop[axis]}-pixel crops; add images, or use a smaller crop size"
            )
        at_end = bool(rng.integers(2))
        cut = length - band if at_end else band
        first = np.take(img, np.arange(cut), axis=1 + axis)
        second = np.take(img, np.arange(cut, length), axis=1 + axis)
        t, v = (first, second) if at_end else (second, first)
        train.append(np.ascontiguousarray(t))
        val.append(np.ascontiguousarray(v))
    return Split(train, val, f"{len(images)} image(s) split into training parts and validation bands")


# ---------------------------------------------------------------- crop sampling


def _crop_positions(shape: tuple[int, ...], crop: tuple[int, ...]) -> int:
    return int(np.prod([s - c + 1 for s, c in zip(shape, crop)]))


def random_crop(img: np.ndarray, crop: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(img.shape[1:], crop)]
    index = (slice(None),) + tuple(slice(a, a + c) for a, c in zip(starts, crop))
    return img[index]


def noise_safe_flips(orientation: str, spatial_dims: int) -> tuple[tuple[int, ...], bool]:
    """Which spatial axes a training crop may be flipped along without changing its noise, and whether
    its last two axes may be swapped.

    A flip across the noise lines moves whole lines and keeps the order of the pixels in each, so the
    correlation the autoregressive decoder models is untouched. A flip along the lines would reverse
    that order (a camera's read-out smear would then trail the wrong way), and a swap would turn rows
    into columns, so neither is allowed, except for pixel-independent noise ("none"), which every flip
    and swap leaves as it is.
    """
    axes = tuple(range(spatial_dims))
    if orientation == "none":
        return axes, True
    along = {"x": spatial_dims - 1, "y": spatial_dims - 2, "z": 0}[orientation]
    return tuple(a for a in axes if a != along), False


class CropSampler:
    """Random crops from the training images, drawn in the calling thread (no worker processes).

    Images are chosen in proportion to the number of crop positions they offer, so every pixel is
    about equally likely to be seen. Crops may be flipped at random along `flip_axes` (spatial axes)
    and have their last two axes swapped (`swap`, square crops only); `noise_safe_flips` says which
    keep the noise as it is. Nothing is flipped by default.
    """

    def __init__(self, images: list[np.ndarray], crop: tuple[int, ...], seed: int | None,
                 flip_axes: tuple[int, ...] = (), swap: bool = False) -> None:
        self.images = images
        self.crop = crop
        weights = np.array([_crop_positions(img.shape[1:], crop) for img in images], dtype=np.float64)
        self.p = weights / weights.sum()
        self.rng = np.random.default_rng(seed)
        self.flip_axes = tuple(flip_axes)
        self.swap = swap and len(crop) >= 2 and crop[-1] == crop[-2]

    def _flipped(self, c: np.ndarray) -> np.ndarray:
        for axis in self.flip_axes:
            if self.rng.random() < 0.5:
                c = np.flip(c, axis=1 + axis)
        if self.swap and self.rng.random() < 0.5:
            c = np.swapaxes(c, -1, -2)
        return c

    def batch(self, size: int) -> np.ndarray:
        picks = self.rng.choice(len(self.images), size=size, p=self.p)
        crops = [random_crop(self.images[i], self.crop, self.rng) for i in picks]
        if self.flip_axes or self.swap:
            crops = [self._flipped(c) for c in crops]
        return np.stack(crops)


def fixed_crops(images: list[np.ndarray], crop: tuple[int, ...], n: int, seed: int | None) -> np.ndarray:
    """The validation crops: drawn once, the same at every validation."""
    sampler = CropSampler(images, crop, None if seed is None else seed + 7919)
    return sampler.batch(n)
