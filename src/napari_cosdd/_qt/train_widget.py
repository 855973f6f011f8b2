"""Train widget: choose noisy image layers and settings, train in a thread worker with a live loss plot."""

from __future__ import annotations

import threading
from pathlib import Path

from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible
from superqt.utils import create_worker

from ..engine.config import (DEFAULT_PRESET_CPU, DEFAULT_PRESET_GPU, ORIENTATIONS, PRESETS, ModelConfig, TrainConfig,
                             preset_defaults)
from ..engine.progress import format_duration
from .common import (
    ask_model_path,
    check_image_layer,
    default_axes,
    default_input,
    describe_error,
    follow_layers,
    guarded,
    layer_array,
    load_model_or_report,
    report,
)
from .plots import LossPlot
from .session import session_for
from .settings_form import SettingsForm


class TrainingRun:
    """One press of Train: the Trainer is built inside the worker (reading a lazy layer's frames, splitting
    and normalising take seconds on large data), so a stop asked before it exists is kept and passed on."""

    def __init__(self, build) -> None:
        self._build = build
        self.trainer = None
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()
        trainer = self.trainer
        if trainer is not None:
            trainer.stop()

    def events(self):
        """The worker's generator: build the Trainer, then its training events."""
        self.trainer = self._build()
        if self._stop.is_set():  # Stop or close came while the data were read: end at the first step
            self.trainer.stop()
        return (yield from self.trainer.fit())


class TrainWidget(QWidget):
    """Layers -> Trainer -> events -> progress, plot and a model shared with the Denoise widget."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.run = None
        self.worker = None
        self.model = None
        self._axes_edited = False

        self.layer_list = QListWidget()
        self.layer_list.setMaximumHeight(90)
        self.layer_list.itemChanged.connect(self._selection_changed)
        self.axes = QLineEdit()
        self.axes.setToolTip("One letter per axis of the layer's data: T (time), Z, C (channel), S (sample), "
                             "Y, X. With orientation z, Z is a spatial axis (a 3-D model).")
        self.axes.textEdited.connect(self._on_axes_edited)
        self.orientation = QComboBox()
        self.orientation.addItems(list(ORIENTATIONS))
        self.orientation.setToolTip("Axis along which the noise is correlated (see the Noise widget).")
        self.orientation.currentTextChanged.connect(self._orientation_changed)
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0, 10_000)
        self.minutes.setValue(10)
        self.minutes.setSpecialValueText("no limit")
        self.steps = QSpinBox()
        self.steps.setRange(0, 10_000_000)
        self.steps.setValue(0)
        self.steps.setSpecialValueText("no limit")
        self.device = QComboBox()
        self._fill_devices()
        self.advanced_form = SettingsForm((TrainConfig, ModelConfig))
        self.advanced_form.show_defaults(ModelConfig, preset_defaults(self.preset.currentText()))
        self.preset.currentTextChanged.connect(
            lambda name: self.advanced_form.show_defaults(ModelConfig, preset_defaults(name)))
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(self.advanced_form.native)

        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(lambda: self.start(resume=False))
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.continue_button = QPushButton("Continue training")
        self.continue_button.clicked.connect(lambda: self.start(resume=True))
        self.save_button = QPushButton("Save model...")
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button = QPushButton("Load model...")
        self.load_button.clicked.connect(self._load_dialog)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.time_left = QLabel("")
        self.loss_plot = LossPlot(collapse_kl=TrainConfig().collapse_kl)
        self.status = QLabel("Choose noisy image layers, then Train.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("images", self.layer_list)
        form.addRow("axes", self.axes)
        form.addRow("orientation", self.orientation)
        form.addRow("preset", self.preset)
        form.addRow("minutes", self.minutes)
        form.addRow("steps", self.steps)
        form.addRow("device", self.device)
        buttons = QHBoxLayout()
        for b in (self.train_button, self.stop_button, self.continue_button):
            buttons.addWidget(b)
        files = QHBoxLayout()
        files.addWidget(self.save_button)
        files.addWidget(self.load_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.time_left)
        layout.addWidget(self.loss_plot)
        layout.addLayout(files)
        layout.addWidget(self.status)
        layout.addStretch()

        follow_layers(napari_viewer, self.reset_choices)
        self.session.orientation_chosen.connect(self.set_orientation)
        self.session.model_changed.connect(self._on_session_model)
        self.reset_choices()
        self._set_running(False)

    # ------------------------------------------------------------------ layers and settings

    def _fill_devices(self) -> None:
        from ..engine.device import available_devices

        for name, description in available_devices():
            self.device.addItem(f"{name}: {description}", name)
        first = self.device.itemData(0)
        self.preset.setCurrentText(DEFAULT_PRESET_GPU if str(first).startswith("cuda") else DEFAULT_PRESET_CPU)

    def reset_choices(self, event=None) -> None:
        """Rebuild the layer list from the viewer, keeping the ticks of layers that are still there."""
        checked = set(self.selected_names())
        self.layer_list.blockSignals(True)
        self.layer_list.clear()
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        # Nothing ticked yet: tick the selected image, or the top one that is not an output of ours.
        fallback = default_input(self.viewer) if not checked else None
        for layer in images:
            item = QListWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            # Compare names: napari hands plugins proxies, a new object at every access.
            tick = layer.name in checked or (fallback is not None and layer.name == fallback.name)
            item.setCheckState(Qt.CheckState.Checked if tick else Qt.CheckState.Unchecked)
            self.layer_list.addItem(item)
        self.layer_list.blockSignals(False)
        self._selection_changed()

    def selected_names(self) -> list[str]:
        return [self.layer_list.item(i).text() for i in range(self.layer_list.count())
                if self.layer_list.item(i).checkState() == Qt.CheckState.Checked]

    def select_layers(self, names: list[str]) -> None:
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    def _selection_changed(self, item=None) -> None:
        names = self.selected_names()
        if names and not self._axes_edited and names[0] in self.viewer.layers:
            dims = 3 if self.orientation.currentText() == "z" else 2
            self.axes.setText(default_axes(self.viewer.layers[names[0]], dims))

    def _on_axes_edited(self, text: str) -> None:
        self._axes_edited = bool(text.strip())

    def _orientation_changed(self, text: str) -> None:
        self._selection_changed()

    def set_orientation(self, orientation: str) -> None:
        self.orientation.setCurrentText(orientation)

    def _train_config(self) -> TrainConfig:
        values = self.advanced_form.values(TrainConfig)
        minutes = self.minutes.value() or None
        steps = self.steps.value() or None
        if minutes is None and steps is None:
            raise ValueError("Set a time budget (minutes) or a number of steps.")
        return TrainConfig(max_minutes=minutes, max_steps=steps, device=self.device.currentData(), **values)

    # ------------------------------------------------------------------ training

    @property
    def trainer(self):
        """The running Trainer, once the worker has built it (None before and after a run)."""
        return self.run.trainer if self.run is not None else None

    def start(self, resume: bool = False) -> None:
        """Check the settings and layers here (a mistake is said at once), then build the Trainer and train
        in a worker, so that reading large layers never blocks napari."""
        from ..engine.train import Trainer

        if self.worker is not None:
            return
        names = self.selected_names()
        if not names:
            report(self.status, "Tick at least one image layer to train on.", "error")
            return
        layers = [self.viewer.layers[n] for n in names]
        for layer in layers:
            problem = check_image_layer(layer)
            if problem:
                report(self.status, problem, "error")
                return
        if resume and self.model is None:
            report(self.status, "There is no model to continue: train one or load a model file first.", "error")
            return
        try:
            cfg = self._train_config()
            overrides = {} if resume else self.advanced_form.values(ModelConfig)
        except Exception as exc:  # noqa: BLE001 - a message, never a traceback
            report(self.status, describe_error(exc), "error")
            return
        orientation = self.orientation.currentText()
        axes = self.axes.text().strip().upper()
        dims = self.model.config.spatial_dims if resume else (3 if orientation == "z" else 2)
        if resume and self.model.config.orientation != orientation:
            self.orientation.setCurrentText(self.model.config.orientation)
            orientation = self.model.config.orientation
        arrays = [layer_array(layer, lazy=True) for layer in layers]  # references, read in the worker
        model, preset = (self.model if resume else None), self.preset.currentText()

        def build():
            return Trainer(arrays, axes, model=model, preset=preset, orientation=orientation, train_config=cfg,
                           spatial_dims=dims, **overrides)

        self.run = run = TrainingRun(build)
        self._source_names = names
        if not resume:
            self.loss_plot.clear()
        self.worker = create_worker(guarded, run.events(), _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._on_event)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(run.stop)
        self.destroyed.connect(run.stop)  # the widget is gone: stop at the next step
        self._set_running(True)
        report(self.status, f"Reading {', '.join(names)} and building the "
                            f"{'model to continue' if resume else 'new model'}...")
        self.worker.start()

    def stop(self) -> None:
        """Ask the engine to stop at the next step; it keeps the best weights so far."""
        if self.run is not None and self.worker is not None:
            self.run.stop()
            self.status.setText("Stopping at the next step...")

    def _on_event(self, ev) -> None:
        if ev.kind in ("step", "validation", "done"):
            fraction = ev.fraction
            if fraction is not None:
                self.progress.setValue(int(1000 * fraction))
            total = f"/{ev.total_steps}" if ev.total_steps else ""
            self.time_left.setText(f"step {ev.step}{total} - {format_duration(ev.elapsed)} elapsed, "
                                   f"{format_duration(ev.eta)} left")
            self.loss_plot.add_event(ev)
        if ev.kind == "start":
            self.status.setText(ev.message)
        elif ev.kind == "warning":
            report(self.status, ev.message, "warning")
        elif ev.kind == "done":
            self.progress.setValue(1000)
            self._done_message = f"Training ended: {ev.message}."

    def _on_error(self, exc: BaseException) -> None:
        self._done_message = None
        report(self.status, describe_error(exc), "error")

    def _on_finished(self) -> None:
        trainer, self.run, self.worker = self.trainer, None, None
        self._set_running(False)
        message = getattr(self, "_done_message", None)
        self._done_message = None
        # A model whose latents collapsed would only give flat images: it is not handed to Denoise.
        if trainer is not None and trainer.history and trainer.history[-1]["steps"] > 0 and not trainer.collapsed:
            self.model = trainer.model
            best = trainer.history[-1].get("best_val_elbo")
            description = f"trained in this session on {', '.join(self._source_names)}"
            self.session.set_model(self.model, description)
            if message:
                extra = f" Best validation ELBO {best:.4f}." if best is not None else ""
                report(self.status, message + extra + " The model is ready in the Denoise widget.")
        elif message and trainer is not None and not trainer.collapsed:
            report(self.status, message + " No training step was made, so there is no new model.", "warning")

    def _on_session_model(self, model, description: str) -> None:
        if model is not self.model:
            self.model = model
            self._set_running(self.worker is not None)

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.continue_button.setEnabled(not running and self.model is not None)
        self.save_button.setEnabled(not running and self.model is not None)
        self.load_button.setEnabled(not running)

    # ------------------------------------------------------------------ files

    def save_model_to(self, path) -> bool:
        from ..engine.model_file import save_model

        if self.model is None:
            report(self.status, "There is no model to save yet.", "error")
            return False
        try:
            written = save_model(self.model, path, extra={"trained_on": getattr(self, "_source_names", [])})
        except Exception as exc:  # noqa: BLE001
            report(self.status, f"Could not save the model: {describe_error(exc)}", "error")
            return False
        report(self.status, f"Model saved to {written}.")
        return True

    def load_model_from(self, path) -> bool:
        model = load_model_or_report(path, self.status)
        if model is None:
            return False
        self.model = model
        self.orientation.setCurrentText(model.config.orientation)
        self.session.set_model(model, f"loaded from {Path(path).name}")
        self._set_running(False)
        report(self.status, f"Loaded {Path(path).name}: orientation {model.config.orientation}, "
                            f"{model.config.levels} levels, {model.config.features} features.")
        return True

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save COSDD model", "model.cosdd", "COSDD model (*.cosdd)")
        if path:
            self.save_model_to(path)

    def _load_dialog(self) -> None:
        path = ask_model_path(self)
        if path:
            self.load_model_from(path)

    def closeEvent(self, event) -> None:
        if self.run is not None:
            self.run.stop()
        super().closeEvent(event)
