"""Denoising with a trained model: direct or sampled, tiled with smooth blending, as a generator."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .device import autocast, free_memory, memory_budget, resolve_device
from .nets.model import COSDD
from .output_check import OutputCheck, check_output, check_region
from .progress import run_to_end
from .stores import MemoryOutputs, Outputs

METHODS = ("direct", "sample")


@dataclass
class InferenceEvent:
    """Progress of a denoising run: `done` of `total` tile passes."""

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / max(self.total, 1)


@dataclass
class DenoiseResult:
    """Outputs in the input's axes (samples: an extra leading axis). Absent outputs are None."""

    direct: np.ndarray | None = None
    mean: np.ndarray | None = None
    variance: np.ndarray | None = None
    std: np.ndarray | None = None
    median: np.ndarray | None = None
    samples: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    #: Whether the main output (direct, else the mean) improves on the input; see output_check.
    check: OutputCheck | None = None

    def outputs(self) -> dict[str, np.ndarray]:
        names = ("direct", "mean", "variance", "std", "median", "samples")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


# ---------------------------------------------------------------------------- tiling


def bytes_per_pixel(model: COSDD) -> int:
    """Rough peak activation memory of one inference pass, per pixel of the input."""
    return 4 * model.config.features * 16


# On a CPU, tiles beyond ~256 px (2-D) run slower per pixel: their activations no longer fit the
# caches (measured: 4.2 s/MPx at 256 px tiles, 11 s/MPx at 704 px, small preset, 2 threads).
CPU_TILE_CAP = {2: 256, 3: 64}


def auto_tile(model: COSDD, device: torch.device, batch: int = 1) -> int:
    """Tile side (a multiple of the model's size multiple) that fits the memory budget, and on a CPU
    the cache-friendly size."""
    m = model.config.size_multiple
    dims = model.config.spatial_dims
    pixels = memory_budget(device) / (bytes_per_pixel(model) * batch)
    side = int(pixels ** (1.0 / dims))
    if device.type == "cpu":
        side = min(side, CPU_TILE_CAP[dims])
    side = max((side // m) * m, m, 32)
    return min(side, 4096)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start positions covering [0, length) with tiles of `tile` that overlap by at least `overlap`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


def balanced_tile(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile side (a multiple of `multiple`, at most `tile`) that covers `length` with as
    few tiles as `tile` needs.

    Tiles of the largest side waste work where the last one mostly repeats its neighbour (a 512 px
    frame in tiles of 256 overlapping by 32 needs three, two of them overlapping by 224 px). Shrinking
    all of them to share the length evenly keeps their number and the overlap, and computes
    1.27x the frame's pixels there instead of 2.25x.
    """
    if length <= tile:
        return length
    n = len(tile_starts(length, tile, overlap))
    side = math.ceil((length + (n - 1) * overlap) / n)
    side = math.ceil(side / multiple) * multiple
    return min(max(side, 2 * overlap), tile)


def blend_window(tile: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D weights: a raised-cosine ramp over `overlap` pixels on inner edges, 1 on image borders."""
    w = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        if not at_start:
            w[:overlap] = ramp
        if not at_end:
            w[-overlap:] = ramp[::-1]
    return w


def _tiles(shape: tuple[int, ...], tile: tuple[int, ...], overlap: tuple[int, ...]):
    """Yield (slices, weight) for every tile of an image of `shape`."""
    per_axis = []
    for length, t, o in zip(shape, tile, overlap):
        t = min(t, length)
        starts = tile_starts(length, t, o)
        per_axis.append([
            (slice(s, s + t), blend_window(t, o if len(starts) > 1 else 0, s == 0, s + t == length))
            for s in starts
        ])
    for combo in np.ndindex(*[len(a) for a in per_axis]):
        slices = tuple(per_axis[a][i][0] for a, i in enumerate(combo))
        weight = per_axis[0][combo[0]][1]
        for a in range(1, len(combo)):
            weight = np.multiply.outer(weight, per_axis[a][combo[a]][1])
        yield slices, weight


def _pad_to_multiple(x: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the spatial axes of (B, C, *spatial) up to multiples of m (reflect where possible)."""
    spatial = x.shape[2:]
    pads = [(-s) % m for s in spatial]
    if not any(pads):
        return x, tuple(spatial)
    flat = []
    for p in reversed(pads):
        flat += [0, p]
    mode = "reflect" if all(p < s for p, s in zip(pads, spatial)) else "replicate"
    return F.pad(x, flat, mode=mode), tuple(spatial)


def _crop_to(x: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


# ---------------------------------------------------------------------------- running the model


def check_model_input(model: COSDD, image, axes: str) -> D.Layout:
    """Check an image against a model (values, axes, dimensionality, channels); return its layout.
    Raises InputError with a message that says what to do."""
    if D.in_memory(image):
        D.check_values(image)
    else:  # a file or store too large to read here: its frames are checked as they are read
        D.check_dtype(image)
    layout = D.make_layout(image, axes, model.config.spatial_dims)
    if layout.n_channels != model.config.in_channels:
        raise D.InputError(
            f"the model expects {model.config.in_channels} channel(s) but the image has {layout.n_channels}; "
            "pick the matching model or set the channel axis (C) correctly"
        )
    return layout


def _model_input(model: COSDD, image, axes: str) -> tuple[D.Layout, np.ndarray]:
    """Check an image against a model; return its layout and its (N, C, *spatial) float32 stack."""
    layout = check_model_input(model, image, axes)
    return layout, layout.to_engine(np.asarray(image))


def borrow(model: COSDD, device: torch.device) -> COSDD:
    """The model to run inference with, leaving the caller's exactly as it was (mode, device, weights):
    the model itself when it is already on ``device`` and in eval mode, else an eval-mode copy there.
    So denoising while the same model trains neither flips it to eval mode nor moves it."""
    if not model.training and next(model.parameters()).device == device:
        return model
    twin = copy.deepcopy(model)
    return twin.to(device).eval()


def _generator(device: torch.device, seed: int | None) -> torch.Generator | None:
    """A random stream of this call's own (seeded), or None for the global one (unseeded calls)."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


class _Runner:
    """Runs the model on normalised tiles on one device, padding each to the size multiple."""

    def __init__(self, model: COSDD, device: torch.device, bf16: bool) -> None:
        self.model = model
        self.device = device
        self.bf16 = bf16

    def _input(self, tile: np.ndarray) -> tuple[torch.Tensor, tuple[int, ...]]:
        x = torch.from_numpy(np.ascontiguousarray(tile)).to(self.device)[None]
        return _pad_to_multiple(x, self.model.config.size_multiple)

    @staticmethod
    def _output(y: torch.Tensor, spatial: tuple[int, ...]) -> np.ndarray:
        return _crop_to(y.float(), spatial).cpu().numpy()

    @torch.no_grad()
    def __call__(self, fn, tile: np.ndarray, **kwargs) -> np.ndarray:
        x, spatial = self._input(tile)
        with autocast(self.device, self.bf16):
            y = fn(x, **kwargs)
        return self._output(y, spatial)

    @torch.no_grad()
    def encode(self, tile: np.ndarray) -> tuple[list[torch.Tensor], tuple[int, ...]]:
        """The tile's bottom-up values (kept on the device for all of its samples) and its size."""
        x, spatial = self._input(tile)
        with autocast(self.device, self.bf16):
            return self.model.vae.bottom_up(x), spatial

    @torch.no_grad()
    def samples(self, encoded: tuple[list[torch.Tensor], tuple[int, ...]], n: int,
                generator: torch.Generator | None) -> np.ndarray:
        skips, spatial = encoded
        with autocast(self.device, self.bf16):
            y = self.model.sample_from(skips, n, generator)
        return self._output(y, spatial)


def denoise_iter(model: COSDD, image, axes: str, method: str = "direct", n_samples: int = 100,
                 variance: bool = True, median: bool = False, keep_samples: bool = False,
                 tile: int | None = None, overlap: int | None = None, device: str = "auto",
                 bf16: bool = True, seed: int | None = None, calibrated: bool = True,
                 out: Outputs | None = None) -> Iterator[InferenceEvent]:
    """Generator of progress events whose return value (StopIteration.value) is a DenoiseResult.

    direct: one pass of the Direct Denoiser. sample: n_samples posterior samples giving the mean and,
    when asked, the variance and std, the pixel-wise median and the samples. The mean and variance of
    each tile accumulate as its samples arrive (Welford); the median holds one tile's samples.

    `image` may be any array with the axes `axes`: numpy, memory-mapped, zarr or dask. It is read one
    frame at a time, and each finished frame goes to `out` (engine.stores): numpy arrays in memory by
    default, or OME-Zarr/TIFF files written as the frames finish, so that the memory needed is set by a
    frame and its tiles, not by the number of frames or samples.

    `tile` is the largest tile side (default: from the memory budget, at most 256 px on a CPU); the
    tiles are shrunk to share each axis evenly without adding any (`balanced_tile`). Sampling encodes
    each tile once and draws all of its samples from that.

    When the model carries a std calibration (engine.calibration) and `calibrated` is true, the variance
    and std are scaled by it, and ``info["std"]`` says so; otherwise they are the samples' own spread.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "direct" and model.direct_denoiser is None:
        raise D.InputError("this model has no Direct Denoiser; use method 'sample'")
    if method == "sample" and n_samples < 1:
        raise ValueError("n_samples must be at least 1")
    layout = check_model_input(model, image, axes)
    dev = resolve_device(device)
    generator = _generator(dev, seed)
    model = borrow(model, dev)
    runner = _Runner(model, dev, bf16)
    dims = model.config.spatial_dims
    mean_ = model.data_mean.cpu().numpy().reshape((-1,) + (1,) * dims)
    std_ = model.data_std.cpu().numpy().reshape((-1,) + (1,) * dims)
    calibration = getattr(model, "calibration", None) if calibrated else None

    sample_batch = 1
    tile_side = tile
    if method == "sample" and dev.type != "cpu":
        sample_batch = max(1, min(n_samples, 8))  # on a CPU larger batches gain nothing
    if tile_side is None:
        tile_side = auto_tile(model, dev, sample_batch)
    m = model.config.size_multiple
    tile_side = max(m, (int(tile_side) // m) * m)
    spatial = layout.spatial_shape
    n_frames = layout.n_frames
    ov = overlap if overlap is not None else max(16, tile_side // 8)
    tile_shape = tuple(balanced_tile(s, tile_side, min(ov, tile_side // 2), m) for s in spatial)
    overlap_shape = tuple(min(ov, t // 2) for t in tile_shape)
    tiles = list(_tiles(spatial, tile_shape, overlap_shape))
    passes_per_tile = 1 if method == "direct" else math.ceil(n_samples / sample_batch)
    total = n_frames * len(tiles) * passes_per_tile
    done = 0

    summed = ["direct"] if method == "direct" else ["mean"] + (["variance"] if variance else []) + (
        ["median"] if median else [])
    names = summed + (["std"] if "variance" in summed else [])
    keep = keep_samples and method == "sample"
    store = out if out is not None else MemoryOutputs()
    weight_sum = np.zeros(spatial, dtype=np.float32)
    for slices, w in tiles:
        weight_sum[slices] += w
    # The output check looks at a few frames' central boxes: those are kept as the frames pass.
    pick, box = check_region(n_frames, spatial, layout.spatial_axes)
    seen_in, seen_out = [], []

    try:
        store.begin(layout, names + (["samples"] if keep else []), n_samples if keep else 0)
        yield InferenceEvent(0, total, f"{n_frames} image(s), {len(tiles)} tile(s) of {tile_shape}")
        for i in range(n_frames):
            raw = layout.read_frame(image, i)
            if not D.in_memory(image):
                D.check_frame(raw, f"frame {i}")
            norm = (raw.astype(np.float32, copy=False) - mean_) / std_
            sums = {n: np.zeros(norm.shape, dtype=np.float32) for n in summed}
            for slices, w in tiles:
                region = norm[(slice(None),) + slices]
                at = (slice(None),) + slices
                if method == "direct":
                    sums["direct"][at] += runner(model.direct, region)[0] * w
                    done += 1
                    yield InferenceEvent(done, total)
                    continue
                # Running mean and M2 (Welford, merged batch by batch) over the samples of this tile.
                count = 0
                t_mean = np.zeros(region.shape, dtype=np.float64)
                t_m2 = np.zeros(region.shape, dtype=np.float64)
                tile_samples = [] if median else None
                encoded = runner.encode(region)  # deterministic: once per tile, not per sample
                while count < n_samples:
                    b = min(sample_batch, n_samples - count)
                    s = runner.samples(encoded, b, generator).astype(np.float64)
                    b_mean = s.mean(0)
                    b_m2 = ((s - b_mean) ** 2).sum(0)
                    delta = b_mean - t_mean
                    new = count + b
                    t_mean += delta * (b / new)
                    t_m2 += b_m2 + delta**2 * (count * b / new)
                    if tile_samples is not None:
                        tile_samples.append(s.astype(np.float32))
                    if keep:
                        store.add("samples", i, (s * w).astype(np.float32), slices, (slice(count, new),))
                    count = new
                    done += 1
                    yield InferenceEvent(done, total)
                sums["mean"][at] += (t_mean * w).astype(np.float32)
                if variance:
                    sums["variance"][at] += (t_m2 / max(n_samples - 1, 1) * w).astype(np.float32)
                del encoded
                if median:
                    sums["median"][at] += np.median(np.concatenate(tile_samples), axis=0) * w
            finished = {}
            for n, arr in sums.items():
                arr /= weight_sum
                finished[n] = arr * std_ + mean_ if n != "variance" else (
                    arr * std_**2 if calibration is None else calibration.variance(arr * std_**2))
            if "variance" in finished:
                finished["std"] = np.sqrt(finished["variance"])
            for n in names:
                store.write(n, i, finished[n])
            if keep:
                for k in range(n_samples):
                    block = store.read("samples", i, leading=(slice(k, k + 1),))
                    store.write("samples", i, block / weight_sum * std_ + mean_, leading=(slice(k, k + 1),))
            if i in pick:
                seen_in.append(raw[(slice(None),) + box].astype(np.float32))
                seen_out.append(finished[names[0]][(slice(None),) + box])
        paths = store.paths()
        outputs = store.finish()
    except BaseException:
        store.abort()  # a stopped or failed run leaves no half-written files
        raise
    finally:
        free_memory(dev)

    result = DenoiseResult(info={"method": method, "tile": tile_shape, "tiles": len(tiles),
                                 "n_samples": n_samples if method == "sample" else 0})
    if paths:
        result.info["paths"] = {n: str(p) for n, p in paths.items()}
    if variance and method == "sample":
        result.info["std"] = ({"calibrated": True, **calibration.to_dict()} if calibration is not None
                              else {"calibrated": False})
    for n, arr in outputs.items():
        setattr(result, n, arr)
    # The main output (direct, or the mean of the samples) is checked against the input.
    result.check = check_output(np.stack(seen_in), np.stack(seen_out), layout.spatial_axes,
                                model.config.orientation, frame_numbers=pick)
    result.info["check"] = result.check.to_dict()
    return result


def denoise(model: COSDD, image: np.ndarray, axes: str, **kwargs) -> DenoiseResult:
    """Denoise one array (see denoise_iter for the options) and return all outputs."""
    return run_to_end(denoise_iter(model, image, axes, **kwargs))


def calibrate_iter(model: COSDD, image: np.ndarray, axes: str, reference: np.ndarray | None = None,
                   background: np.ndarray | None = None, n_samples: int = 20, match: str = "affine",
                   tile: int | None = None, device: str = "auto", seed: int | None = 0,
                   floor: bool | None = None) -> Iterator[InferenceEvent]:
    """Fit the posterior std's scale against what the user knows; a generator that returns a
    CalibrationReport (engine.calibration). The model is not changed: set ``model.calibration =
    report.calibration`` to use it (and save the model to keep it).

    reference: a low-noise image of the same field (same axes and shape as `image`: a long exposure, or
    the average of repeated frames). background: a mask (True on flat background; the image's shape or
    its spatial shape). Give one or both; with both, the reference is used inside the mask only.
    floor: also fit a floor added in quadrature (engine.calibration); by default with a reference, not
    with a background region alone.
    """
    from .calibration import fit_to_background, fit_to_reference

    if reference is None and background is None:
        raise ValueError("give a reference image or a background region to calibrate against")
    layout, stack = _model_input(model, image, axes)
    mask = None
    if background is not None:
        mask = np.asarray(background).astype(bool)
        spatial = tuple(stack.shape[2:])
        if mask.shape == tuple(layout.shape):
            mask = layout.to_engine(mask.astype(np.float32)) > 0.5
        elif mask.shape == tuple(layout.spatial_shape):
            mask = np.broadcast_to(mask, stack.shape)
        else:
            raise ValueError(f"the background mask has shape {mask.shape}; it must be the image's {layout.shape} "
                             f"or its {layout.spatial_axes} shape {spatial}")
    ref = None
    if reference is not None:
        reference = np.asarray(reference)
        if reference.shape != tuple(layout.shape):
            raise ValueError(f"the reference has shape {reference.shape} but the image {tuple(layout.shape)} "
                             f"({axes}); give the same field of view, same size")
        ref = layout.to_engine(reference.astype(np.float32))
    result = yield from denoise_iter(model, image, axes, method="sample", n_samples=n_samples, variance=True,
                                     tile=tile, device=device, seed=seed, calibrated=False)
    std, mean = layout.to_engine(result.std), layout.to_engine(result.mean)
    if ref is not None:
        where = "a reference image" + (" inside a background mask" if mask is not None else "")
        return fit_to_reference(std, mean, ref, mask=mask, match=match,
                                fitted_on=f"{where}, {n_samples} samples", floor=True if floor is None else floor)
    return fit_to_background(std, mean, stack, mask, fitted_on=f"a background region, {n_samples} samples",
                             floor=bool(floor))


def calibrate_model(model: COSDD, image: np.ndarray, axes: str, **kwargs):
    """calibrate_iter to its end: the CalibrationReport."""
    return run_to_end(calibrate_iter(model, image, axes, **kwargs))


def generate_noisy_iter(model: COSDD, image: np.ndarray, axes: str, device: str = "auto",
                        max_side: int = 512, seed: int | None = None) -> Iterator[InferenceEvent]:
    """Sample a new noisy image from the AR decoder given the latents of (a central crop of) an image.

    A generator of progress events (positions drawn along the lines) that returns (crop of the real
    image, generated image, the signal the generated image was drawn around), each (C, *spatial) in
    image units, so the caller can compare their noise. Cost is linear in the line length (sliding
    window); closing the generator stops at the next position.
    """
    img = _model_input(model, image, axes)[1][0]
    m = model.config.size_multiple
    index = [slice(None)]
    for s in img.shape[1:]:
        side = min(s, max_side)
        side = max((side // m) * m, min(s, m))
        start = (s - side) // 2
        index.append(slice(start, start + side))
    real = img[tuple(index)]
    dev = resolve_device(device)
    model = borrow(model, dev)
    try:
        with torch.no_grad():
            x = model.normalise(torch.from_numpy(np.ascontiguousarray(real))[None].to(dev))
            x, spatial = _pad_to_multiple(x, m)
        steps = model.generate_noisy_iter(x, generator=_generator(dev, seed))
        yield InferenceEvent(0, 1, "drawing new noise from the model")
        while True:
            try:
                done, total = next(steps)
            except StopIteration as stop:
                noisy, signal = stop.value
                break
            if done % 8 == 0 or done == total:
                yield InferenceEvent(done, total)
        with torch.no_grad():
            out = model.denormalise(_crop_to(noisy, spatial))[0].cpu().numpy()
            signal = model.denormalise(_crop_to(signal, spatial))[0].cpu().numpy()
    finally:
        free_memory(dev)
    return real, out, signal


def generate_noisy(model: COSDD, image: np.ndarray, axes: str, device: str = "auto",
                   max_side: int = 512, seed: int | None = None, return_signal: bool = False):
    """generate_noisy_iter to its end: (crop of the real image, generated image), and with
    return_signal also the signal the generated image was drawn around."""
    real, out, signal = run_to_end(generate_noisy_iter(model, image, axes, device, max_side, seed))
    return (real, out, signal) if return_signal else (real, out)
