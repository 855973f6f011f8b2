"""Where denoising writes its outputs: numpy arrays in memory, or files written frame by frame.

Denoising (inference.denoise_iter) finishes one frame (one position of the sample axes: T, S, and Z for a
2-D model) at a time and hands it to an output store. In memory, the outputs are numpy arrays. On disk,
each finished frame goes straight into an OME-Zarr image or a (Big)TIFF file, so the memory a run needs
is that of a frame and its tiles, whatever the number of frames; posterior samples are accumulated in the
store (tile by tile, read-modify-write), never as n copies of the image in memory, except in a TIFF file
(whose page order cannot take them as they come; use OME-Zarr for many samples of a large input).

Files are written under a temporary name (``*.part``) and renamed when the run ends, so a stopped or
failed run never leaves a half-written output under its final name.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
from pathlib import Path

import numpy as np

from .data import InputError, Layout
from .io import IMAGEJ_LIMIT, tiff_kwargs, write_tiff

#: NGFF 0.4 axis names and types of our axis letters.
NGFF_AXES = {"T": ("t", "time"), "C": ("c", "channel"), "Z": ("z", "space"), "Y": ("y", "space"),
             "X": ("x", "space")}
#: Our letter for a NGFF axis name (anything else is a sample axis).
FROM_NGFF = {name: letter for letter, (name, _) in NGFF_AXES.items()}
SAMPLES_AXIS = "Q"  # the leading axis of the posterior samples output, in stored metadata


class Outputs:
    """Base: output arrays with the input's axes (samples: one more axis in front), frame by frame.

    ``begin`` is called once with the input's layout, the output names and the number of samples kept
    (0 for none); ``write`` puts a finished frame, ``add`` accumulates a block of samples, ``read`` gives
    a frame back (samples), ``finish`` returns the outputs to read and ``abort`` removes what was written.
    """

    def begin(self, layout: Layout, names: list[str], n_samples: int = 0) -> None:
        self.layout = layout
        self.arrays = {}
        for name in names:
            shape = ((n_samples,) if name == "samples" else ()) + tuple(layout.shape)
            self.arrays[name] = self._create(name, shape)

    def _create(self, name: str, shape: tuple[int, ...]):
        return np.zeros(shape, dtype=np.float32)

    def write(self, name: str, i: int, block: np.ndarray, leading: tuple = ()) -> None:
        """A finished (*lead, C, *spatial) block of frame `i` in image units."""
        self.layout.write_frame(self.arrays[name], i, block.astype(np.float32, copy=False), leading=leading)

    def read(self, name: str, i: int, spatial=None, leading: tuple = ()) -> np.ndarray:
        return self.layout.read_frame(self.arrays[name], i, spatial, leading)

    def add(self, name: str, i: int, block: np.ndarray, spatial, leading: tuple) -> None:
        """Add a (*lead, C, *tile) block to a region of frame `i` (blended tiles of posterior samples)."""
        current = self.read(name, i, spatial, leading)
        self.layout.write_frame(self.arrays[name], i, current + block, spatial, leading)

    def finish(self) -> dict:
        """The outputs, each with the input's axes (samples: the samples axis first)."""
        return self.arrays

    def abort(self) -> None:
        self.arrays = {}

    def paths(self) -> dict[str, Path]:
        return {}


class MemoryOutputs(Outputs):
    """numpy arrays in memory: the results of denoise_iter when no store is given."""


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def ngff_multiscales(axes: str, scale: dict | None = None, units: dict | None = None) -> list | None:
    """NGFF 0.4 ``multiscales`` metadata (one level, path "0") for an array with our axes, or None when
    the axes cannot be written as NGFF 0.4 (an S axis beside a C axis, or an order it does not allow)."""
    entries = []
    for a in axes:
        if a in NGFF_AXES:
            name, kind = NGFF_AXES[a]
            entry = {"name": name, "type": kind}
        else:  # S (a sequence) or the samples axis: NGFF's one custom axis, in the channel's place
            entry = {"name": "sample"}
        if units and a in units and entry.get("type") == "space":
            entry["unit"] = units[a]
        entries.append(entry)
    rank = {"time": 0, "channel": 1, None: 1, "space": 2}
    ranks = [rank[e.get("type")] for e in entries]
    if ranks != sorted(ranks) or ranks.count(1) > 1 or ranks.count(0) > 1 or not 2 <= ranks.count(2) <= 3:
        return None
    values = [float((scale or {}).get(a, 1.0)) for a in axes]
    return [{"version": "0.4", "name": "image", "axes": entries,
             "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": values}]}]}]


class ZarrOutputs(Outputs):
    """Each output an OME-Zarr image (NGFF 0.4, zarr format 2) ``<folder>/<stem>_cosdd_<name>.ome.zarr``,
    chunked by frame (and 512-px squares), so a finished frame is written without reading anything back.
    Where the axes cannot be written as NGFF 0.4 (a sequence axis beside channels), the image is a zarr
    group with its array at "0" and the axes in the ``napari_cosdd`` attribute, which this package reads.
    """

    suffix = ".ome.zarr"

    def __init__(self, folder: str | os.PathLike, stem: str, scale: dict | None = None,
                 units: dict | None = None, chunk: int = 512) -> None:
        self.folder, self.stem = Path(folder), stem
        self.scale, self.units, self.chunk = scale, units, chunk

    def path_for(self, name: str) -> Path:
        return self.folder / f"{self.stem}_cosdd_{name}{self.suffix}"

    def paths(self) -> dict[str, Path]:
        return {name: self.path_for(name) for name in getattr(self, "arrays", {})}

    def _axes(self, name: str) -> str:
        return (SAMPLES_AXIS if name == "samples" else "") + self.layout.axes

    def _create(self, name: str, shape: tuple[int, ...]):
        import zarr

        axes = self._axes(name)
        chunks = tuple(min(n, self.chunk) if a in "YX" else (min(n, 64) if a == "Z" and self.layout.spatial_dims == 3
                       else (n if a == "C" else 1)) for a, n in zip(axes, shape))
        part = _part(self.path_for(name))
        _remove(part)
        self.folder.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(part), mode="w", zarr_format=2)
        array = group.create_array("0", shape=shape, chunks=chunks, dtype="float32", fill_value=0.0)
        multiscales = ngff_multiscales(axes, self.scale, self.units)
        if multiscales is not None:
            group.attrs["multiscales"] = multiscales
        group.attrs["napari_cosdd"] = {"axes": axes, "output": name}
        return array

    def finish(self) -> dict:
        import zarr

        out = {}
        for name in self.arrays:
            final = self.path_for(name)
            _remove(final)
            os.replace(_part(final), final)
            out[name] = zarr.open_array(str(final / "0"), mode="r")
        self.arrays = {}
        return out

    def abort(self) -> None:
        for name in getattr(self, "arrays", {}):
            _remove(_part(self.path_for(name)))
        self.arrays = {}


_END, _ABORT = object(), object()


class _Aborted(Exception):
    pass


class _TiffStream:
    """One TIFF file written page by page in a thread of its own, fed finished frames through a short
    queue (tifffile writes a file from an iterator of pages when the whole shape is given up front)."""

    def __init__(self, path: Path, shape: tuple[int, ...], kwargs: dict) -> None:
        self.path, self.error = path, None
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, args=(shape, kwargs), daemon=True)
        self.thread.start()

    def _pages(self):
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if item is _ABORT:
                raise _Aborted
            yield from item

    def _run(self, shape, kwargs) -> None:
        import tifffile

        try:
            tifffile.imwrite(self.path, data=self._pages(), shape=shape, dtype="float32", **kwargs)
        except BaseException as err:  # noqa: BLE001 - reported to the caller by put/close
            self.error = err

    def put(self, item) -> None:
        while self.thread.is_alive():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        if self.error is not None and not isinstance(self.error, _Aborted):
            raise OSError(f"writing {self.path.name} failed: {self.error}") from self.error

    def close(self, abort: bool = False) -> None:
        self.put(_ABORT if abort else _END)
        self.thread.join()
        if not abort and self.error is not None:
            raise OSError(f"writing {self.path.name} failed: {self.error}") from self.error


class TiffOutputs(Outputs):
    """Each output a TIFF file ``<folder>/<stem>_cosdd_<name>.tif`` written frame by frame: ImageJ
    hyperstacks (with the source's calibration) where the axes and size allow, else BigTIFF with tifffile's
    shaped metadata. The file's axes are the frame order (sample axes, C, then the spatial axes): the
    input's own order in all usual cases, so pages can be appended as frames finish. Posterior samples are
    the exception: they are gathered in memory and written at the end (use ZarrOutputs for many samples
    of a large input)."""

    suffix = ".tif"
    IMAGEJ_LIMIT = IMAGEJ_LIMIT  # larger outputs are BigTIFF

    def __init__(self, folder: str | os.PathLike, stem: str, like=None) -> None:
        self.folder, self.stem, self.like = Path(folder), stem, like

    path_for = ZarrOutputs.path_for
    paths = ZarrOutputs.paths

    def begin(self, layout: Layout, names: list[str], n_samples: int = 0) -> None:
        self.layout = layout
        self.file_axes = layout.sample_axes + ("C" if "C" in layout.axes else "") + layout.spatial_axes
        self.streams: dict[str, _TiffStream] = {}
        super().begin(layout, names, n_samples)

    def _kwargs(self, axes: str, nbytes: int) -> dict:
        return tiff_kwargs(axes, self.like, bigtiff=nbytes > self.IMAGEJ_LIMIT)

    def _create(self, name: str, shape: tuple[int, ...]):
        if name == "samples":
            return np.zeros(shape, dtype=np.float32)
        file_shape = tuple(self.layout.shape[self.layout.axes.index(a)] for a in self.file_axes)
        part = _part(self.path_for(name))
        self.folder.mkdir(parents=True, exist_ok=True)
        _remove(part)
        self.streams[name] = _TiffStream(part, file_shape,
                                         self._kwargs(self.file_axes, 4 * int(np.prod(file_shape))))
        return None

    def write(self, name: str, i: int, block: np.ndarray, leading: tuple = ()) -> None:
        if name == "samples":
            return super().write(name, i, block, leading)
        pages = np.ascontiguousarray(block, dtype=np.float32)
        self.streams[name].put(pages.reshape((-1,) + pages.shape[-2:]))

    def finish(self) -> dict:
        import tifffile

        out = {}
        for name, stream in self.streams.items():
            stream.close()
            final = self.path_for(name)
            os.replace(stream.path, final)
            data = tifffile.memmap(final, mode="r")
            data = data.reshape(tuple(self.layout.shape[self.layout.axes.index(a)] for a in self.file_axes))
            out[name] = np.transpose(data, [self.file_axes.index(a) for a in self.layout.axes])
        self.streams = {}
        samples = self.arrays.get("samples")
        if samples is not None:
            axes = self.layout.axes
            # The samples axis goes first: as T for ImageJ when the image has none, else as a sequence.
            lead = "T" if "T" not in axes and "S" not in axes else "S"
            write_tiff(self.path_for("samples"), samples, lead + axes, like=self.like)
            out["samples"] = samples
        self.arrays = {}
        return out

    def abort(self) -> None:
        for stream in getattr(self, "streams", {}).values():
            stream.close(abort=True)
            _remove(stream.path)
        self.streams = {}
        self.arrays = {}


def store_for(fmt: str, folder, stem: str, like=None) -> Outputs:
    """The output store of a file format name: "tiff" or "ome-zarr"."""
    if fmt == "tiff":
        return TiffOutputs(folder, stem, like=like)
    if fmt in ("ome-zarr", "zarr"):
        scale, units = {}, {}
        if like is not None:
            if like.resolution is not None:
                scale.update(X=1.0 / like.resolution[0], Y=1.0 / like.resolution[1])
            if "spacing" in like.imagej:
                scale["Z"] = float(like.imagej["spacing"])
            unit = like.imagej.get("unit")
            if unit:
                units = {a: str(unit) for a in "ZYX"}
        return ZarrOutputs(folder, stem, scale=scale or None, units=units or None)
    raise InputError(f"unknown output format {fmt!r}; use tiff or ome-zarr")
