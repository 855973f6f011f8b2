"""Pieces the widgets share: layer lists that stay in sync, axes defaults, output layers, messages."""

from __future__ import annotations

import logging
import threading
import traceback

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QComboBox, QFileDialog, QLabel, QWidget

log = logging.getLogger("napari_cosdd")

OOM_ADVICE = ("The GPU ran out of memory. Use smaller crops or a smaller batch for training, or a smaller tile "
              "size for denoising, or choose the CPU device.")


def follow_layers(viewer, callback) -> None:
    """Call `callback` whenever a layer is added, removed, moved or renamed (new layers included)."""

    def on_inserted(event=None) -> None:
        if event is not None and getattr(event, "value", None) is not None:
            event.value.events.name.connect(callback)
        callback()

    viewer.layers.events.inserted.connect(on_inserted)
    viewer.layers.events.removed.connect(callback)
    viewer.layers.events.moved.connect(callback)
    for layer in viewer.layers:
        layer.events.name.connect(callback)


class LayerCombo(QComboBox):
    """A drop-down of the viewer's layers of some types that follows additions, removals and renames."""

    def __init__(self, viewer, layer_types=(Image,), none_text: str | None = None, parent: QWidget | None = None,
                 follow_selection: bool = True):
        super().__init__(parent)
        self.viewer = viewer
        self.layer_types = layer_types
        self.none_text = none_text
        # False: a new choice starts at none_text, never at the selected layer (a reference must be chosen).
        self.follow_selection = follow_selection
        follow_layers(viewer, self.reset_choices)
        self.reset_choices()

    def reset_choices(self, event=None) -> None:
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        if self.none_text is not None:
            self.addItem(self.none_text)
        for layer in self.viewer.layers:
            if isinstance(layer, self.layer_types):
                self.addItem(layer.name)
        index = self.findText(current)
        if index < 0:  # no choice yet (or it is gone): the selected layer, else the top one
            active = self.viewer.layers.selection.active
            if active is not None and isinstance(active, self.layer_types) and self.follow_selection:
                index = self.findText(active.name)
            elif self.count() and self.none_text is None:
                inputs = [layer.name for layer in self.viewer.layers
                          if isinstance(layer, self.layer_types) and is_likely_input(layer)]
                index = self.findText(inputs[-1]) if inputs else self.count() - 1
        self.setCurrentIndex(index if index >= 0 else (0 if self.count() else -1))
        self.blockSignals(False)
        self.currentIndexChanged.emit(self.currentIndex())

    def current_layer(self):
        name = self.currentText()
        if not name or name == self.none_text or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]


def is_likely_input(layer) -> bool:
    """False for layers the plugin made and for the samples' ground truth: never picked by default."""
    meta = getattr(layer, "metadata", {}) or {}
    return not (meta.get("cosdd_output") or meta.get("ground_truth"))


def default_input(viewer):
    """The layer a user most likely means: the selected image, else the top image that is an input."""
    active = viewer.layers.selection.active
    if isinstance(active, Image) and is_likely_input(active):
        return active
    inputs = [layer for layer in viewer.layers if isinstance(layer, Image) and is_likely_input(layer)]
    return inputs[-1] if inputs else None


def default_axes(layer, spatial_dims: int = 2) -> str:
    """Axes of an image layer's data when the user has not said: the engine's one guess
    (data.guess_axes) from the layer's metadata (the axes of the file it came from, or of our samples),
    then its axis labels, then the rule."""
    from ..engine.data import guess_axes

    meta = layer.metadata if hasattr(layer, "metadata") else {}
    return guess_axes(layer.data.ndim, spatial_dims, file_axes=meta.get("axes"),
                      labels=getattr(layer, "axis_labels", None))


def check_image_layer(layer) -> str | None:
    """Why a layer cannot be used as a noisy image, or None when it can."""
    if layer is None:
        return "Choose an image layer (open one, or File > Open Sample > napari-cosdd)."
    if not isinstance(layer, Image):
        return f"'{layer.name}' is a {type(layer).__name__.lower()} layer; choose an image layer."
    if layer.rgb:
        return (f"'{layer.name}' is an RGB image; COSDD needs raw intensities. Split the colour channels "
                "(right-click the layer > Split RGB) and choose one.")
    if min(layer.data.shape[-2:]) < 2:
        return f"'{layer.name}' is only {min(layer.data.shape[-2:])} pixel(s) wide; choose a real image."
    return None


#: Layers larger than this (or backed by dask, zarr or a memory map) are denoised into files by default.
LARGE_BYTES = 1 << 30


def layer_array(layer, lazy: bool = False):
    """The layer's data (the highest resolution of a multiscale layer): an in-memory numpy array, or with
    lazy=True the layer's own array when it is dask, zarr or memory-mapped, which the engine reads frame
    by frame instead of loading it whole."""
    from ..engine.data import in_memory

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if lazy and not in_memory(data) and hasattr(data, "shape") and hasattr(data, "dtype"):
        return data
    return np.asarray(data)


def is_large(layer) -> bool:
    """Whether a layer is backed by something other than memory, or too large to double in memory."""
    from ..engine.data import in_memory

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    nbytes = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
    return not in_memory(data) or nbytes > LARGE_BYTES


def lazy_view(array):
    """A dask view of an output stored on disk (zarr or memory-mapped) for a napari layer: napari reads
    only the planes it shows, and arithmetic on it (a threshold) stays lazy."""
    import dask.array as da

    from ..engine.data import in_memory

    if in_memory(array):
        return array
    chunks = tuple(1 for _ in array.shape[:-2]) + tuple(array.shape[-2:])
    return da.from_array(array, chunks=chunks)


def layer_geometry(layer) -> dict:
    """What output layers take from their source: scale, translate, units and axis labels (plain values,
    so the source may be deleted while the work runs)."""
    geometry = {"scale": list(layer.scale), "translate": list(layer.translate)}
    for key in ("units", "axis_labels"):
        value = getattr(layer, key, None)
        if value is not None:
            geometry[key] = [str(v) for v in value]
    return geometry


def put_layer(viewer, data: np.ndarray, name: str, like=None, **kwargs):
    """Update the layer called `name` in place, or add it (an Image, or with labels=True a Labels layer);
    take scale, translate, units and axis labels
    from `like` (a layer or a layer_geometry dict), with 1 / 0 / pixel / "sample" for extra leading axes
    (posterior samples)."""
    if like is not None:
        geometry = like if isinstance(like, dict) else layer_geometry(like)
        extra = data.ndim - len(geometry["scale"])
        fill = {"scale": 1.0, "translate": 0.0, "units": "pixel", "axis_labels": "sample"}
        for key, value in geometry.items():
            values = list(value)
            kwargs.setdefault(key, [fill[key]] * extra + values[max(-extra, 0):])
    kwargs.setdefault("metadata", {})
    kwargs["metadata"] = {**kwargs["metadata"], "cosdd_output": True}
    labels = kwargs.pop("labels", False)
    kind = Labels if labels else Image
    if labels:
        kwargs.pop("contrast_limits", None)
        kwargs.pop("colormap", None)
    if name in viewer.layers:
        layer = viewer.layers[name]
        if isinstance(layer, kind) and layer.data.ndim == data.ndim:
            layer.data = data
            for key in ("scale", "translate", "units", "axis_labels"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            if labels:
                return layer
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
            else:
                layer.reset_contrast_limits()
            return layer
        viewer.layers.remove(layer)
    if labels:
        return viewer.add_labels(data, name=name, **kwargs)
    return viewer.add_image(data, name=name, **kwargs)


class WorkFailed(Exception):
    """An error raised inside a worker, carried out of it.

    superqt's generator worker treats a RuntimeError from the generator as a sign that Qt objects
    are gone: it only warns, and never emits `errored` or `finished`, so the buttons would stay
    disabled. torch's errors (out of memory included) are RuntimeErrors, so every error is wrapped.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def guarded(gen, cancel: threading.Event | None = None):
    """Drive an engine generator inside a worker: yield its events, return its value, close it as
    soon as `cancel` is set (so its clean-up, e.g. freeing GPU memory, runs now), wrap its errors."""
    try:
        while True:
            if cancel is not None and cancel.is_set():
                gen.close()
                return None
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            yield event
    except Exception as exc:
        raise WorkFailed(exc) from exc


def describe_error(exc: BaseException) -> str:
    """A message for the user: what went wrong and what to do. Unexpected errors go to the log."""
    from ..engine.data import InputError
    from ..engine.model_file import ModelFileError

    if isinstance(exc, WorkFailed):
        exc = exc.original
    name = type(exc).__name__
    if "OutOfMemoryError" in name or "out of memory" in str(exc).lower():
        return OOM_ADVICE
    if isinstance(exc, (InputError, ModelFileError, ValueError)):
        return str(exc)
    if name == "TrainingError":
        return f"Training stopped: {exc}"
    log.error("napari-cosdd: unexpected error\n%s", "".join(traceback.format_exception(exc)))
    return f"Unexpected error ({name}: {exc}). Details are in the log."


def report(status: QLabel, message: str, level: str = "info") -> None:
    """Show a message in the widget's status line and as a napari notification."""
    status.setText(message)
    status.setStyleSheet("color: #e06c5a;" if level == "error" else "")
    {"error": show_error, "warning": show_warning}.get(level, show_info)(message)


MODEL_FILTER = "COSDD model (*.cosdd);;All files (*)"


def ask_model_path(parent: QWidget) -> str:
    """A file dialog for a model file; '' when cancelled."""
    path, _ = QFileDialog.getOpenFileName(parent, "Load COSDD model", "", MODEL_FILTER)
    return path


def load_model_or_report(path, status: QLabel):
    """The model in `path`, or None after telling the user why it cannot be opened."""
    from ..engine.model_file import load_model

    try:
        return load_model(path)
    except Exception as exc:  # noqa: BLE001 - a message, never a traceback
        report(status, describe_error(exc), "error")
        return None
