"""Spatial autocorrelation of the noise, and the orientation it suggests for the AR decoder.

COSDD's decoder models noise correlated along one axis, so the user must pick that axis. The noise is
seen best where there is little signal: without a region we pick the darkest, flattest tiles of the
image; with a region (a box or a mask) we use only that; after training the residual (noisy - denoised)
is the best estimate of all. Everything is computed with zero-padded FFTs, pooled over tiles and frames.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .data import InputError, check_dtype, check_values, guess_axes, in_memory, make_layout

#: An input read lazily (larger than memory) is estimated on at most this many of its frames.
MAX_LAZY_FRAMES = 32

#: Lags whose mean |correlation| is the evidence for an axis.
EVIDENCE_LAGS = (1, 2, 3, 4, 5)
#: Below this mean |correlation| the noise counts as uncorrelated along an axis.
CORRELATED = 0.05
#: The strongest axis must beat the next one by this factor to be a clear choice.
CLEAR_MARGIN = 1.5
#: Automatic mode keeps this fraction of the tiles (the lowest-signal ones).
AUTO_FRACTION = 0.1

_AXIS_NAMES = {"x": "rows (x)", "y": "columns (y)", "z": "depth (z)"}


@dataclass
class NoiseAutocorrelation:
    """The noise autocorrelation of an image and what it says about the orientation.

    autocorrelation : (2L+1,) * d array over lags -L..L per spatial axis (in ``axes`` order), 1 at lag 0.
    profiles : per axis letter ("x", "y", "z"), the correlation at lags 0..L along that axis.
    evidence : per axis letter, the mean |correlation| at ``EVIDENCE_LAGS``.
    orientation : the suggestion, "x", "y", "z" or "none"; ``reason`` says why in plain words.
    regions : the boxes used, as ((start, stop), ...) per spatial axis; ``source`` says how they were
        chosen: "low-signal tiles", "region" or "residual".
    """

    autocorrelation: np.ndarray
    axes: str
    max_lag: int
    profiles: dict[str, np.ndarray]
    evidence: dict[str, float]
    orientation: str
    reason: str
    source: str
    regions: list[tuple[tuple[int, int], ...]] = field(default_factory=list)
    n_pixels: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self, profile_lags: int = 10) -> str:
        """Several lines of text a person can read: suggestion, reason, evidence, profiles."""
        lines = [f"suggested orientation: {self.orientation}", f"reason: {self.reason}",
                 f"noise estimated from: {self.source} ({len(self.regions)} region(s), {self.n_pixels} pixels)"]
        lines += [f"note: {n}" for n in self.notes]
        lags = "-".join(str(k) for k in (EVIDENCE_LAGS[0], EVIDENCE_LAGS[-1]))
        lines.append("evidence (mean |correlation| at lags " + lags + "): "
                     + ", ".join(f"{a} {v:.3f}" for a, v in self.evidence.items()))
        k = min(profile_lags, self.max_lag)
        for a, prof in self.profiles.items():
            lines.append(f"profile along {a}, lags 0-{k}: " + " ".join(f"{v:+.2f}" for v in prof[: k + 1]))
        return "\n".join(lines)


# ---------------------------------------------------------------- FFT core


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast for every FFT library)."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _plane_residuals(stack: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Subtract from each tile of ``stack`` (n, *shape) its least-squares plane over the ``mask`` pixels,
    and zero the pixels outside the mask. A plane removes slow illumination gradients, which would
    otherwise read as correlation along every axis, and barely touches short-range noise."""
    coords = np.nonzero(mask)
    columns = [np.ones(len(coords[0]), dtype=np.float32)]
    if len(coords[0]) > 4 * (mask.ndim + 1):
        columns += [(c - c.mean()).astype(np.float32) for c in coords]
    design = np.column_stack(columns)
    values = stack[(slice(None),) + coords].astype(np.float32)
    coef = np.linalg.solve(design.T.astype(np.float64) @ design, (values @ design).T.astype(np.float64))
    values -= (design @ coef.astype(np.float32)).T
    out = np.zeros(stack.shape, dtype=np.float32)
    out[(slice(None),) + coords] = values
    return out


def _pair_counts(mask: np.ndarray, shape: tuple[int, ...], max_lag: int) -> np.ndarray:
    """Number of pixel pairs inside ``mask`` at each lag -L..L per axis."""
    if mask.all():  # a full box: a product of (n - |k|) per axis, no FFT needed
        counts = [mask.shape[i] - np.abs(np.r_[-max_lag:max_lag + 1]) for i in range(mask.ndim)]
        return functools.reduce(np.multiply, np.ix_(*counts)).astype(np.float64)
    spec = np.fft.rfftn(mask.astype(np.float32), shape)
    den = np.fft.irfftn((spec * spec.conj()).real, shape)
    return np.rint(den[_lag_index(shape, max_lag)])


def _lag_index(shape: tuple[int, ...], max_lag: int):
    return np.ix_(*[np.r_[-max_lag:max_lag + 1] % s for s in shape])


def _lag_sums(stack: np.ndarray, mask: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums over the tiles of r(i) r(i+k), and the number of pixel pairs, for lags -L..L per axis.

    ``stack`` is (n, *shape), already zero outside ``mask``. Zero padding by L keeps the circular FFT
    from wrapping lags into each other; the tiles go through one batched float32 FFT.
    """
    shape = tuple(_fft_size(s + max_lag) for s in mask.shape)
    axes = tuple(range(1, stack.ndim))
    spec = np.fft.rfftn(stack, shape, axes)
    power = (spec.real**2 + spec.imag**2).sum(axis=0)
    num = np.fft.irfftn(power, shape)[_lag_index(shape, max_lag)]
    return num.astype(np.float64), _pair_counts(mask, shape, max_lag) * len(stack)


# ---------------------------------------------------------------- choosing where to look


def _tile_grid(shape: tuple[int, ...], tile: int) -> list[tuple[slice, ...]]:
    starts = [list(range(0, max(s - tile, 0) + 1, tile)) or [0] for s in shape]
    grid = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape))
    return [tuple(slice(int(a), int(min(a + tile, s))) for a, s in zip(start, shape)) for start in grid]


def _block_means(patch: np.ndarray, block: int = 4) -> np.ndarray:
    """Means over non-overlapping blocks of ``block`` pixels per axis (the remainder is dropped)."""
    b = [block if s >= block else 1 for s in patch.shape]
    trimmed = patch[tuple(slice(0, (s // k) * k) for s, k in zip(patch.shape, b))]
    split = sum(((s // k, k) for s, k in zip(trimmed.shape, b)), ())
    return trimmed.reshape(split).mean(axis=tuple(range(1, 2 * trimmed.ndim, 2)))


def _low_signal_tiles(frames: np.ndarray, max_lag: int) -> list[tuple[slice, ...]]:
    """The tiles of the frame average with the least structure.

    Structure is scored by the variance of 4-pixel block means: averaging divides the variance of
    short-range noise by about the block size while keeping blobs, filaments and edges, so the tiles
    that score lowest are the flattest background the image has. (On the synthetic benchmarks this
    beat ranking by brightness, by gradient or by raw variance: white noise then reads as uncorrelated.)
    """
    mean_img = frames.mean(axis=0)
    # Small tiles find the gaps between structures; a plane per tile removes what is left of slow signal.
    tile = max(32, max_lag + 7)
    tiles = _tile_grid(mean_img.shape, tile)
    structure = [float(_block_means(mean_img[t]).var()) for t in tiles]
    keep = max(1, int(round(AUTO_FRACTION * len(tiles))))
    return [tiles[i] for i in np.argsort(structure, kind="stable")[:keep]]


def _region_mask(region, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """A box ((start, stop) per axis, or slices) or a boolean mask -> a boolean mask of the frame."""
    if isinstance(region, np.ndarray) and region.dtype == bool:
        if region.shape != spatial_shape:
            raise InputError(f"the region mask has shape {region.shape} but the image's spatial shape is "
                             f"{spatial_shape}; draw the mask on the same image")
        mask = region
    else:
        try:
            box = [b if isinstance(b, slice) else slice(int(b[0]), int(b[1])) for b in region]
        except (TypeError, IndexError, ValueError):
            raise InputError("a region is a box, one (start, stop) pair per spatial axis, or a boolean mask "
                             "of the image's spatial shape") from None
        if len(box) != len(spatial_shape):
            raise InputError(f"the region box has {len(box)} axes but the image has {len(spatial_shape)} "
                             "spatial axes; give one (start, stop) pair per spatial axis")
        mask = np.zeros(spatial_shape, dtype=bool)
        mask[tuple(box)] = True
    if not mask.any():
        raise InputError("the region contains no pixels of the image; draw it over the image")
    return mask


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


# ---------------------------------------------------------------- the suggestion


def _suggest(evidence: dict[str, float], n_pixels: int) -> tuple[str, str]:
    """Orientation and a plain-language reason from the per-axis evidence."""
    # Correlations estimated from n pixels scatter by about 1/sqrt(n); demand a few times that.
    threshold = max(CORRELATED, 4.0 / np.sqrt(max(n_pixels, 1)))
    ranked = sorted(evidence.items(), key=lambda kv: kv[1], reverse=True)
    (best, e_best), (second, e_second) = ranked[0], ranked[1]
    listing = ", ".join(f"{_AXIS_NAMES[a]} {v:.2f}" for a, v in ranked)
    if e_best < threshold:
        return "none", (f"the noise looks uncorrelated between neighbouring pixels (mean |correlation| at lags "
                        f"1-5: {listing}; below {threshold:.2f}), so the noise model needs no direction")
    if e_best >= CLEAR_MARGIN * e_second and e_best - e_second >= CORRELATED:
        return best, (f"the noise is correlated along {_AXIS_NAMES[best]} (mean |correlation| {e_best:.2f} at "
                      f"lags 1-5, against {e_second:.2f} along {_AXIS_NAMES[second]}); the decoder should follow "
                      f"{_AXIS_NAMES[best]}")
    # Similar correlation along every axis is what signal looks like (structure is roughly isotropic);
    # it may also be noise blurred in 2-D, which no single direction of the decoder captures.
    return "none", (f"the correlation is similar along every axis ({listing}), which is what signal left in "
                    "the chosen pixels looks like, not noise along one direction; if the image has background, "
                    "draw a region over it and compute again")


# ---------------------------------------------------------------- public function


def noise_autocorrelation(
    image,
    axes: str | None = None,
    *,
    region=None,
    denoised=None,
    max_lag: int = 25,
    spatial_dims: int | None = None,
) -> NoiseAutocorrelation:
    """Autocorrelation of the noise in ``image`` and the orientation it suggests.

    Parameters
    ----------
    image : array_like
        2-D image, or a stack (frames, channels, or 3-D volumes) described by ``axes``.
    axes : str, optional
        Letters from STCZYX, one per axis; by default data.guess_axes' rule ("YX", "TYX", "TZYX", ...;
        "ZYX" for a 3-D array with spatial_dims=3).
    region : box or bool array, optional
        Use only these pixels of each frame: ((start, stop), ...) per spatial axis, or a boolean mask of
        the spatial shape. Without it the lowest-signal tiles are chosen automatically.
    denoised : array_like, optional
        The denoised image (same shape): the noise is then estimated as ``image - denoised``.
    max_lag : int
        Largest lag per axis (default 25); shrunk, with a note, when the image or region is smaller.
    spatial_dims : {2, 3}, optional
        3 treats Z as a spatial axis (a 3-D autocorrelation with a z profile); 2 treats Z planes as frames.
        Default: 3 when the axes contain Z, else 2.

    Frames are handled one by one and their lag sums pooled, which averages the frames' estimates
    weighted by their pixel counts.
    """
    # A memory-mapped, zarr or dask input is not read whole: an evenly spread sample of its frames is.
    lazy = hasattr(image, "shape") and hasattr(image, "dtype") and not in_memory(image)
    arr = image if lazy else np.asarray(image)
    (check_dtype if lazy else check_values)(arr)
    if axes is None:
        spatial_dims = spatial_dims or 2
        axes = guess_axes(arr.ndim, spatial_dims)
    if spatial_dims is None:
        spatial_dims = 3 if "Z" in axes.upper() else 2
    layout = make_layout(arr, axes, spatial_dims)
    notes: list[str] = []
    picks = np.arange(layout.n_frames)
    if lazy and layout.n_frames > MAX_LAZY_FRAMES:
        picks = np.unique(np.linspace(0, layout.n_frames - 1, MAX_LAZY_FRAMES).round().astype(int))
        notes.append(f"estimated on {len(picks)} of the {layout.n_frames} frames, evenly spread")

    def frames_of(a) -> np.ndarray:
        if not lazy:
            return layout.to_engine(a).reshape((-1,) + layout.spatial_shape).astype(np.float64)
        return np.stack([layout.read_frame(a, int(i)) for i in picks]).reshape(
            (-1,) + layout.spatial_shape).astype(np.float64)

    frames = frames_of(arr)
    source = "low-signal tiles"
    if denoised is not None:
        den = denoised if lazy else np.asarray(denoised)
        if tuple(den.shape) != tuple(arr.shape):
            raise InputError(f"the denoised image has shape {tuple(den.shape)} but the noisy one has "
                             f"{tuple(arr.shape)}; pass the denoised output of this same image")
        if not lazy:
            check_values(den, "the denoised image")
        frames = frames - frames_of(den)
        source = "residual"
    if max_lag < 1:
        raise InputError(f"max_lag must be at least 1, got {max_lag}")

    spatial = layout.spatial_shape
    if region is not None:
        mask = _region_mask(region, spatial)
        boxes = [_bounding_box(mask)]
        source = "region" if denoised is None else "residual in region"
    elif denoised is not None:
        mask = np.ones(spatial, dtype=bool)
        boxes = [tuple(slice(0, s) for s in spatial)]
    else:
        mask = None
        boxes = _low_signal_tiles(frames, max_lag)

    smallest = min(min(b.stop - b.start for b in box) for box in boxes)
    if smallest < 3:
        raise InputError(f"the {'region' if region is not None else 'image'} is only {smallest} pixel(s) "
                         "across; the autocorrelation needs at least 3 pixels along every axis")
    if max_lag > smallest - 2:
        notes.append(f"max lag reduced from {max_lag} to {smallest - 2} to fit the "
                     f"{'region' if region is not None else 'image'} ({smallest} pixels across)")
        max_lag = smallest - 2

    num = 0.0
    count = 0.0
    n_pixels = 0
    groups: dict[tuple[int, ...], list[tuple[slice, ...]]] = {}
    for box in boxes:
        groups.setdefault(tuple(b.stop - b.start for b in box), []).append(box)
    for frame in frames:
        for group in groups.values():
            stack = np.stack([frame[box] for box in group])
            tmask = np.ones(stack.shape[1:], dtype=bool) if mask is None else mask[group[0]]
            s, c = _lag_sums(_plane_residuals(stack, tmask), tmask, max_lag)
            num = num + s
            count = count + c
            n_pixels += int(tmask.sum()) * len(group)
    cov = num / np.maximum(count, 1.0)
    centre = (max_lag,) * len(spatial)
    if not cov[centre] > 0:
        raise InputError("the noise estimate is zero everywhere in the chosen pixels (a constant region, or "
                         "a denoised image equal to the input); choose another region")
    ac = (cov / cov[centre]).astype(np.float32)

    letters = [a.lower() for a in layout.spatial_axes]
    profiles, evidence = {}, {}
    for i, a in enumerate(letters):
        index = list(centre)
        index[i] = slice(max_lag, None)
        profiles[a] = ac[tuple(index)].copy()
        lags = [k for k in EVIDENCE_LAGS if k <= max_lag]
        evidence[a] = float(np.mean(np.abs(profiles[a][lags])))
    order = [a for a in "xyz" if a in evidence]
    evidence = {a: evidence[a] for a in order}
    profiles = {a: profiles[a] for a in order}
    orientation, reason = _suggest(evidence, n_pixels)
    regions = [tuple((b.start, b.stop) for b in box) for box in boxes]
    return NoiseAutocorrelation(ac, layout.spatial_axes, max_lag, profiles, evidence, orientation, reason,
                                source, regions, n_pixels, notes)
