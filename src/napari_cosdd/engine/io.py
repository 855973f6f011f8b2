"""Reading images (TIFF, .npy) with their axes, and writing results as float32 TIFF in the same axes.

Axes come from ImageJ, OME or tifffile's own shaped metadata when a file has them; otherwise the
caller gives them (the command line's --axes) or they are guessed and said to be a guess.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import AXES_LETTERS, AxesError, InputError, guess_axes, normalise_axes

IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
#: Files larger than this are read lazily (memory-mapped, or page by page) unless asked otherwise.
LAZY_BYTES = 1 << 30
#: ImageJ's TIFF flavour has no 64-bit offsets: larger files are written as BigTIFF.
IMAGEJ_LIMIT = 2**32 - 2**25
# ImageJ hyperstacks hold at most these axes, in this order.
IMAGEJ_ORDER = "TZCYX"


@dataclass
class ImageFile:
    """An image read from disk: the array, its axes, where they came from, and what to write back."""

    path: Path
    data: np.ndarray
    axes: str | None
    axes_source: str  # "metadata", "given", "guessed" or "none"
    imagej: dict = field(default_factory=dict)   # spacing, unit, finterval ... to carry over
    resolution: tuple[float, float] | None = None


OUTPUT_MARK = "_cosdd_"  # in the names of the files napari-cosdd writes


def expand_paths(patterns: list[str], skipped: list[Path] | None = None) -> list[Path]:
    """Files from paths, glob patterns (also on shells that do not expand them) and folders (their TIFF
    and .npy files, not recursive). Each pattern must match something. Patterns and folders leave out
    files that napari-cosdd wrote (``*_cosdd_*``), so results beside their inputs are not read as
    inputs by the next run; they are added to `skipped` when given. A file named outright is kept."""
    paths: list[Path] = []

    def gather(candidates: list[Path], what: str) -> None:
        found = [p for p in candidates if is_image_path(p)]
        ours = [p for p in found if OUTPUT_MARK in p.stem]
        if skipped is not None:
            skipped.extend(ours)
        if not found:
            raise InputError(f"{what}: no TIFF (.tif), NumPy (.npy) or OME-Zarr (.zarr) image there")
        if len(ours) == len(found):
            raise InputError(f"{what}: only napari-cosdd's own outputs (*{OUTPUT_MARK}*) there")
        paths.extend(p for p in found if OUTPUT_MARK not in p.stem)

    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(pattern)))
            if not matches:
                raise InputError(f"no file matches {pattern!r}")
            gather(matches, pattern)
            continue
        path = Path(os.path.expanduser(pattern))
        if not path.exists():
            raise InputError(f"{pattern}: no such file or folder")
        if path.is_dir() and not is_image_path(path):
            gather(sorted(path.iterdir()), f"folder {pattern}")
        else:
            paths.append(path)
    return paths


def is_image_path(path: Path) -> bool:
    """A TIFF or .npy file, or an OME-Zarr (or zarr) folder."""
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        return path.is_dir()
    return path.is_file() and suffix in IMAGE_SUFFIXES


def image_stem(path: Path) -> str:
    """The name outputs are named after: without .tif/.npy, and without .ome(.zarr/.tif)."""
    stem = path.stem
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def _read_zarr(path: Path):
    """An OME-Zarr image (its full resolution, lazily) and its axes; or a plain zarr array."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node, None, None
    attrs = dict(node.attrs)
    axes = (attrs.get("napari_cosdd") or {}).get("axes")
    scale = None
    if "multiscales" in attrs:
        ms = attrs["multiscales"][0]
        dataset = ms["datasets"][0]
        data = node[dataset["path"]]
        if axes is None and "axes" in ms:
            from .stores import FROM_NGFF

            names = [a["name"] if isinstance(a, dict) else a for a in ms["axes"]]
            axes = "".join(FROM_NGFF.get(n.lower(), "S") for n in names)
        for t in dataset.get("coordinateTransformations", []):
            if t.get("type") == "scale":
                scale = t["scale"]
    elif "0" in node:
        data = node["0"]
    else:
        raise InputError(f"{path.name} is a zarr group without an image (no multiscales, no array '0')")
    if axes is not None and (len(axes) != data.ndim or len(set(axes)) != len(axes)):
        axes = None
    return data, axes, scale


def _axes_from_tifffile(axes: str, shape: tuple[int, ...], name: str) -> str | None:
    """tifffile's axes letters -> ours (STCZYX); None when they cannot be trusted."""
    if axes.endswith("S") and shape[-1] in (3, 4):
        raise InputError(f"{name} is an RGB(A) colour image; COSDD needs raw intensities. Save each channel "
                         "as a grayscale (or multichannel, C) image")
    out = []
    for letter in axes:
        if letter in "TZCYX":
            out.append(letter)
        elif letter == "S":  # samples per pixel that are not colour: treat as channels
            out.append("C")
        else:  # I, Q, ... : a sequence of images
            out.append("S")
    result = "".join(out)
    if len(set(result)) != len(result) or not {"Y", "X"} <= set(result):
        return None
    return result


def _lazy_tiff(path: Path):
    """A TIFF series without reading it: a zarr view that reads the pages (or tiles) an index touches.
    Plain reads, not a memory map: a map's pages would stay resident, and count in the process's memory,
    as a file larger than memory is walked through."""
    import tifffile
    import zarr

    return zarr.open(tifffile.imread(path, aszarr=True), mode="r")


def read_image(path: str | os.PathLike, axes: str | None = None, lazy: bool | None = None) -> ImageFile:
    """Read a TIFF, .npy or OME-Zarr image; `axes` (if given) overrides what the file says.

    lazy: read nothing yet and return an array that reads what is indexed (a memory map or a zarr
    array), for inputs larger than memory; by default for files over LAZY_BYTES and for OME-Zarr."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path.name}: unsupported file type {suffix or '(none)'}; use TIFF (.tif), NumPy (.npy) "
                         "or OME-Zarr (.zarr)")
    imagej: dict = {}
    resolution = None
    file_axes = None
    big = path.is_file() and path.stat().st_size > LAZY_BYTES
    lazy = big if lazy is None else lazy
    try:
        if suffix == ".zarr":
            data, file_axes, scale = _read_zarr(path)
            if scale is not None and file_axes is not None and "X" in file_axes and "Y" in file_axes:
                sx, sy = scale[file_axes.index("X")], scale[file_axes.index("Y")]
                resolution = (1.0 / sx, 1.0 / sy) if sx and sy else None
        elif suffix == ".npy":
            data = np.load(path, allow_pickle=False, mmap_mode="r" if lazy else None)
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                data = _lazy_tiff(path) if lazy else series.asarray()
                if tif.is_imagej or tif.is_ome or tif.is_shaped:
                    file_axes = _axes_from_tifffile(series.axes, series.shape, path.name)
                elif series.axes.endswith("S") and series.shape[-1] in (3, 4):
                    _axes_from_tifffile(series.axes, series.shape, path.name)  # raises for RGB
                if tif.is_imagej:
                    meta = tif.imagej_metadata or {}
                    imagej = {k: meta[k] for k in ("spacing", "unit", "finterval") if k in meta}
                page = tif.pages[0]
                if "XResolution" in page.tags and "YResolution" in page.tags:
                    xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
                    if xr[0] and yr[0]:
                        resolution = (xr[0] / xr[1], yr[0] / yr[1])
    except InputError:
        raise
    except Exception as err:  # tifffile and numpy raise many types for unreadable files
        raise InputError(f"{path.name} could not be read as an image ({type(err).__name__}: {err})") from None
    if np.dtype(data.dtype) == object:
        raise InputError(f"{path.name} holds Python objects, not an image")
    if axes:
        axes = normalise_axes(axes)
        if len(axes) != data.ndim:
            raise AxesError(f"--axes {axes!r} names {len(axes)} axes but {path.name} has {data.ndim} "
                             f"(shape {data.shape})" + (f"; the file says {file_axes!r}" if file_axes else ""))
        bad = sorted(set(axes) - set(AXES_LETTERS))
        if bad:
            raise AxesError(f"--axes {axes!r} contain {bad}; use only the letters {AXES_LETTERS}")
        return ImageFile(path, data, axes, "given", imagej, resolution)
    if file_axes is not None:
        return ImageFile(path, data, file_axes, "metadata", imagej, resolution)
    return ImageFile(path, data, None, "none", imagej, resolution)


def default_axes(ndim: int, spatial_dims: int = 2) -> str:
    """Axes to assume when neither the file nor the user says (data.guess_axes' rule)."""
    return guess_axes(ndim, spatial_dims)


def _imagej_compatible(axes: str) -> bool:
    positions = [IMAGEJ_ORDER.find(a) for a in axes]
    return all(p >= 0 for p in positions) and positions == sorted(positions)


def tiff_kwargs(axes: str, like: ImageFile | None = None, bigtiff: bool = False) -> dict:
    """tifffile.imwrite's options for float32 data with `axes`: ImageJ format (with the source's
    calibration) when the axes allow it and the file is not a BigTIFF, otherwise tifffile's shaped
    metadata."""
    kwargs: dict = {}
    if _imagej_compatible(axes) and not bigtiff:
        kwargs["imagej"] = True
        kwargs["metadata"] = {"axes": axes, **(like.imagej if like else {})}
    else:
        kwargs["metadata"] = {"axes": axes.replace("S", "Q")}
        kwargs["photometric"] = "minisblack"  # a leading axis of 3 or 4 is not colour
        kwargs["bigtiff"] = bigtiff
    if like is not None and like.resolution is not None:
        kwargs["resolution"] = like.resolution
    return kwargs


def write_tiff(path: str | os.PathLike, data: np.ndarray, axes: str, like: ImageFile | None = None) -> Path:
    """Write float32 `data` with `axes`; ImageJ format (with the source's calibration) when the axes
    allow it, otherwise tifffile's shaped metadata. The file is written beside and then renamed, so
    an interrupted write never leaves half a file under the final name."""
    import tifffile

    path = Path(path)
    data = np.ascontiguousarray(data, dtype=np.float32)
    kwargs = tiff_kwargs(axes, like, bigtiff=data.nbytes > IMAGEJ_LIMIT)
    tmp = path.with_name(path.name + ".part")
    try:
        tifffile.imwrite(tmp, data, **kwargs)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
