"""Noise widget: the noise autocorrelation of an image layer and the orientation it suggests."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Shapes
from qtpy.QtWidgets import (
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .common import LayerCombo, check_image_layer, default_axes, describe_error, layer_array, put_layer, report
from .plots import ProfilePlot
from .session import session_for

AUTOMATIC = "automatic (lowest-signal tiles)"


def shapes_mask(shapes: Shapes, image: Image) -> np.ndarray:
    """The union of a Shapes layer's shapes as a boolean mask over the image's last two axes.

    Shapes are converted through world coordinates, so a Shapes layer with another scale or
    translate than the image still selects the right pixels."""
    spatial = image.data.shape[-2:]
    masks = []
    for vertices, kind in zip(shapes.data, shapes.shape_type):
        world = np.asarray([shapes.data_to_world(v) for v in vertices])
        pixels = np.asarray([image.world_to_data(w) for w in world])[:, -2:]
        lo = np.clip(np.floor(pixels.min(0)), 0, np.array(spatial)).astype(int)
        hi = np.clip(np.ceil(pixels.max(0)) + 1, 0, np.array(spatial)).astype(int)
        mask = np.zeros(spatial, bool)
        if kind in ("rectangle", "ellipse", "polygon") and np.all(hi > lo):
            mask[lo[0]:hi[0], lo[1]:hi[1]] = True  # the bounding box: rectangles are what users draw
        masks.append(mask)
    if not masks:
        return np.zeros(spatial, bool)
    return np.any(masks, axis=0)


class NoiseWidget(QWidget):
    """Pick an image (and optionally a region), compute, read the suggestion, send it to training."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.result = None

        self.image_combo = LayerCombo(napari_viewer, (Image,))
        self.region_combo = LayerCombo(napari_viewer, (Shapes,), none_text=AUTOMATIC)
        self.region_combo.setToolTip("Draw a rectangle over background in a Shapes layer and pick it here; "
                                     "automatic uses the flattest tiles of the image.")
        self.max_lag = QSpinBox()
        self.max_lag.setRange(2, 200)
        self.max_lag.setValue(25)
        self.compute_button = QPushButton("Compute autocorrelation")
        self.compute_button.clicked.connect(self.compute)
        self.suggestion = QLabel("")
        self.suggestion.setStyleSheet("font-weight: bold;")
        self.reason = QLabel("")
        self.reason.setWordWrap(True)
        self.evidence = QLabel("")
        self.evidence.setWordWrap(True)
        self.profiles = ProfilePlot()
        self.use_button = QPushButton("Use this orientation for training")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self.use_suggestion)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("region", self.region_combo)
        form.addRow("max lag", self.max_lag)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.compute_button)
        layout.addWidget(self.suggestion)
        layout.addWidget(self.reason)
        layout.addWidget(self.evidence)
        layout.addWidget(QLabel("profiles: correlation along rows (x) and columns (y) against the lag"))
        layout.addWidget(self.profiles)
        layout.addWidget(self.use_button)
        layout.addWidget(self.status)
        layout.addStretch()

    def reset_choices(self, event=None) -> None:
        self.image_combo.reset_choices()
        self.region_combo.reset_choices()

    def compute(self) -> None:
        """Compute in the main thread: one FFT pass, well under a second for a 2048x2048 frame."""
        from ..engine.autocorrelation import noise_autocorrelation

        layer = self.image_combo.current_layer()
        problem = check_image_layer(layer)
        if problem:
            report(self.status, problem, "error")
            return
        try:
            data = layer_array(layer, lazy=True)
            axes = default_axes(layer, 2)
            region = None
            shapes = self.region_combo.current_layer()
            if shapes is not None:
                region = shapes_mask(shapes, layer)
                if not region.any():
                    report(self.status, f"'{shapes.name}' has no shape over '{layer.name}'; draw a rectangle "
                                        "over background, or choose automatic.", "error")
                    return
            result = noise_autocorrelation(data, axes, region=region, max_lag=self.max_lag.value(), spatial_dims=2)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message, never a traceback
            report(self.status, describe_error(exc), "error")
            return
        self.result = result
        lag = result.max_lag
        # A diverging map centred at 0; the limits are set by the strongest correlation off the centre
        # (lag 0 is always 1 and would wash everything else out).
        off_centre = np.abs(result.autocorrelation).copy()
        off_centre[(lag,) * off_centre.ndim] = 0.0
        limit = float(max(off_centre.max(), 0.05))
        put_layer(self.viewer, result.autocorrelation, f"{layer.name}_cosdd_autocorrelation",
                  colormap="PiYG", contrast_limits=(-limit, limit), translate=(-lag, -lag), scale=(1.0, 1.0),
                  axis_labels=("lag y", "lag x"),
                  metadata={"cosdd": "noise autocorrelation", "axes": "lag y, lag x", "max_lag": lag})
        self.suggestion.setText(f"Suggested orientation: {result.orientation}")
        self.reason.setText(result.reason[0].upper() + result.reason[1:] + ".")
        notes = " ".join(result.notes)
        self.evidence.setText(
            "Evidence, mean |correlation| at lags 1-5: "
            + ", ".join(f"{a} {v:.3f}" for a, v in result.evidence.items())
            + f". Noise from {result.source} ({len(result.regions)} region(s), {result.n_pixels} pixels). {notes}")
        self.profiles.set_profiles({f"along {a}": p for a, p in result.profiles.items()})
        self.use_button.setEnabled(True)
        report(self.status, f"Autocorrelation of '{layer.name}' added as a layer (lags -{lag}..{lag}; "
                            "the layer's coordinates are the lags).")

    def use_suggestion(self) -> None:
        if self.result is not None:
            self.session.orientation_chosen.emit(self.result.orientation)
            report(self.status, f"Training orientation set to {self.result.orientation}.")
