"""Denoise widget: run a model on an image layer (direct or sampled) into named output layers."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible
from superqt.utils import create_worker

from .common import (
    MODEL_FILTER,
    LayerCombo,
    ask_model_path,
    check_image_layer,
    default_axes,
    describe_error,
    guarded,
    is_large,
    layer_array,
    layer_geometry,
    lazy_view,
    load_model_or_report,
    put_layer,
    report,
)
from .plots import CalibrationPlot, ProfilePlot
from .session import session_for

SESSION_KEY = "session"
PRETRAINED_KEY = "pretrained:stripes"


class DenoiseWidget(QWidget):
    """Model + image layer + method -> `<src>_cosdd_<output>` layers, with progress and Cancel."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self._cancel = threading.Event()
        self._models: dict[str, object] = {}

        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The model trained or loaded in this session, the shipped model for the "
                                    "stripes sample, or a model file.")
        self.load_button = QPushButton("Load model...")
        self.load_button.clicked.connect(self._load_dialog)
        self.image_combo = LayerCombo(napari_viewer, (Image,))
        self.axes = QLineEdit()
        self.axes.setToolTip("One letter per axis of the layer's data: T (time), Z, C (channel), S (sample), "
                             "Y, X. Guessed from the layer (its file's axes, its axis labels), else T or Z "
                             "before Y, X; edit it if the guess is wrong.")
        self._axes_for = None  # (layer name, ndim, model dims) the text was guessed for
        self.method = QComboBox()
        self.method.addItems(["direct", "sample"])
        self.method.currentTextChanged.connect(self._method_changed)
        self.n_samples = QSpinBox()
        self.n_samples.setRange(1, 10_000)
        self.n_samples.setValue(100)
        self.want_mean = QCheckBox("mean")
        self.want_mean.setChecked(True)
        self.want_variance = QCheckBox("variance and std")
        self.want_variance.setChecked(True)
        self.want_median = QCheckBox("median")
        self.want_samples = QCheckBox("posterior samples")
        self.want_uncertain = QCheckBox("mark pixels with std above")
        self.want_uncertain.setToolTip("Add a labels layer that marks where the std exceeds the threshold: where "
                                       "not to trust the denoised image. Calibrate the std first (below) so that "
                                       "the threshold is a real error in image units.")
        self.uncertain_threshold = QDoubleSpinBox()
        self.uncertain_threshold.setDecimals(4)
        self.uncertain_threshold.setRange(0.0, 1e9)
        self.uncertain_threshold.setToolTip("Threshold on the std, in the image's units.")
        # Large images: outputs written frame by frame into OME-Zarr files, shown as lazy layers.
        self.to_files = QCheckBox("write to OME-Zarr files in")
        self.to_files.setToolTip("Write each output, frame by frame, into an OME-Zarr image in this folder and "
                                 "show it as a layer read from there: for images larger than memory. On by "
                                 "default for layers backed by dask, zarr or a file map, or over 1 GB.")
        self.out_folder = QLineEdit()
        self.out_folder.setToolTip("Folder for the OME-Zarr outputs (<layer>_cosdd_<output>.ome.zarr).")
        self.out_folder_button = QPushButton("...")
        self.out_folder_button.setToolTip("Choose the folder")
        self.out_folder_button.clicked.connect(self._choose_folder)
        self.tile = QSpinBox()
        self.tile.setRange(0, 8192)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("automatic")
        self.tile.setToolTip("Largest tile side in pixels. Automatic: from the free memory, at most 256 on a "
                             "CPU. The tiles are shrunk to share the image evenly; a smaller tile needs less "
                             "memory.")
        self.denoise_button = QPushButton("Denoise")
        self.denoise_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.noise_button = QPushButton("Generate noise sample")
        self.noise_button.setToolTip("Draw new noise from the model around the current plane's signal and "
                                     "compare its autocorrelation with the real noise's.")
        self.noise_button.clicked.connect(self.generate_noise)
        self.noise_profiles = ProfilePlot()
        self.noise_profiles.setVisible(False)
        self.noise_summary = QLabel("")
        self.noise_summary.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        # Calibration of the posterior std against what the user knows (engine.calibration).
        self.reference_combo = LayerCombo(napari_viewer, (Image,), none_text="(no reference)",
                                          follow_selection=False)
        self.reference_combo.setToolTip("A low-noise image of the same field, same shape as the image: a long "
                                        "exposure, or the average of repeated frames.")
        self.background_combo = LayerCombo(napari_viewer, (Labels,), none_text="(no background region)",
                                           follow_selection=False)
        self.background_combo.setToolTip("A labels layer painted over flat background (any label counts), "
                                         "the image's shape or one plane's.")
        self.match = QComboBox()
        self.match.addItems(["affine", "none"])
        self.match.setToolTip("affine: map the reference's intensities onto the image's by a gain and an offset "
                              "first (another exposure); none: take them as they are.")
        self.calibrate_button = QPushButton("Calibrate std")
        self.calibrate_button.clicked.connect(self.calibrate)
        self.save_model_button = QPushButton("Save model...")
        self.save_model_button.setToolTip("Write the chosen model, with its calibration, to a model file.")
        self.save_model_button.clicked.connect(self._save_dialog)
        self.export_button = QPushButton("Export to bioimage.io...")
        self.export_button.setToolTip("Write the chosen model's Direct Denoiser as a bioimage.io model (zip) for "
                                      "Fiji/deepImageJ, ilastik or CAREamics; the image above gives its test "
                                      "input and output.")
        self.export_button.clicked.connect(self._export_dialog)
        self.calibration_plot = CalibrationPlot()
        self.calibration_plot.setVisible(False)
        self.calibration_state = QLabel("")
        self.calibration_state.setWordWrap(True)
        calib_form = QFormLayout()
        calib_form.addRow("reference", self.reference_combo)
        calib_form.addRow("background", self.background_combo)
        calib_form.addRow("match", self.match)
        calib_buttons = QHBoxLayout()
        calib_buttons.addWidget(self.calibrate_button)
        calib_buttons.addWidget(self.save_model_button)
        calib_box = QWidget()
        calib_layout = QVBoxLayout(calib_box)
        calib_layout.setContentsMargins(0, 0, 0, 0)
        calib_layout.addWidget(QLabel("Fit the posterior std to the real error, so that it can be read as an "
                                      "error bar. The samples setting above is used."))
        calib_layout.addLayout(calib_form)
        calib_layout.addLayout(calib_buttons)
        calib_layout.addWidget(self.calibration_state)
        calib_layout.addWidget(self.calibration_plot)
        self.calibration_section = QCollapsible("Uncertainty calibration")
        self.calibration_section.addWidget(calib_box)

        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.load_button)
        outputs = QVBoxLayout()
        for box in (self.want_mean, self.want_variance, self.want_median, self.want_samples):
            outputs.addWidget(box)
        uncertain_row = QHBoxLayout()
        uncertain_row.addWidget(self.want_uncertain)
        uncertain_row.addWidget(self.uncertain_threshold)
        outputs.addLayout(uncertain_row)
        form = QFormLayout()
        form.addRow("model", model_row)
        form.addRow("image", self.image_combo)
        form.addRow("axes", self.axes)
        form.addRow("method", self.method)
        form.addRow("samples", self.n_samples)
        form.addRow("outputs", outputs)
        files_row = QHBoxLayout()
        files_row.addWidget(self.to_files)
        files_row.addWidget(self.out_folder, 1)
        files_row.addWidget(self.out_folder_button)
        form.addRow("large images", files_row)
        form.addRow("tile size", self.tile)
        buttons = QHBoxLayout()
        buttons.addWidget(self.denoise_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.calibration_section)
        layout.addWidget(self.export_button)
        layout.addWidget(self.noise_button)
        layout.addWidget(self.noise_profiles)
        layout.addWidget(self.noise_summary)
        layout.addStretch()

        self.session.model_changed.connect(self._refresh_models)
        self._refresh_models()
        self._method_changed(self.method.currentText())
        self._set_running(False)
        self.image_combo.currentTextChanged.connect(lambda *_: self._show_axes_guess())
        self.image_combo.currentTextChanged.connect(lambda *_: self._suggest_threshold())
        self.image_combo.currentTextChanged.connect(lambda *_: self._suggest_files())
        self._suggest_files()
        self.uncertain_threshold.valueChanged.connect(self._threshold_edited)
        self._threshold_is_suggested = True
        self._suggest_threshold()
        self.model_combo.currentIndexChanged.connect(lambda *_: self._show_axes_guess())
        self.model_combo.currentIndexChanged.connect(lambda *_: self._show_calibration_state())
        self._show_axes_guess()
        self._show_calibration_state()

    def _model_dims(self) -> int:
        key = self.model_combo.currentData()
        model = self.session.model if key == SESSION_KEY else self._models.get(key)
        return model.config.spatial_dims if model is not None else 2  # the shipped model is 2-D

    def _show_axes_guess(self) -> None:
        """Put the guessed axes in the field when the layer (or the model's dimensions) changed; an edit
        the user made for this layer stays."""
        layer = self.image_combo.current_layer()
        if layer is None:
            self.axes.setText("")
            self._axes_for = None
            return
        key = (layer.name, layer.data.ndim, self._model_dims())
        if key != self._axes_for:
            self.axes.setText(default_axes(layer, key[2]))
            self._axes_for = key

    # ------------------------------------------------------------------ models

    def _refresh_models(self, *args) -> None:
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        if self.session.model is not None:
            self.model_combo.addItem(f"this session: {self.session.model_description}", SESSION_KEY)
        self.model_combo.addItem("shipped: stripes sample model", PRETRAINED_KEY)
        for key in self._models:
            if key.startswith("file:"):
                self.model_combo.addItem(Path(key[5:]).name, key)
        keys = [self.model_combo.itemData(i) for i in range(self.model_combo.count())]
        newest = SESSION_KEY if (args and self.session.model is not None) else current
        self.model_combo.setCurrentIndex(keys.index(newest) if newest in keys else 0)
        self.model_combo.blockSignals(False)

    def current_model(self):
        """The chosen model, loaded on first use; raises ModelFileError for a bad file."""
        from ..engine.model_file import load_model

        key = self.model_combo.currentData()
        if key == SESSION_KEY:
            return self.session.model
        if key not in self._models:
            from .._sample_data import pretrained_model_path

            self._models[key] = load_model(pretrained_model_path() if key == PRETRAINED_KEY else key[5:])
        return self._models[key]

    def load_model_from(self, path) -> bool:
        """Add a model file to the list and select it (a bad file: a message, nothing changes)."""
        model = load_model_or_report(path, self.status)
        if model is None:
            return False
        key = f"file:{path}"
        self._models[key] = model
        self._refresh_models()
        self.model_combo.setCurrentIndex(self.model_combo.findData(key))
        report(self.status, f"Loaded {Path(path).name} (orientation {model.config.orientation}).")
        return True

    def _load_dialog(self) -> None:
        path = ask_model_path(self)
        if path:
            self.load_model_from(path)

    def reset_choices(self, event=None) -> None:
        self.image_combo.reset_choices()

    # ------------------------------------------------------------------ denoising

    def _method_changed(self, method: str) -> None:
        sampled = method == "sample"
        for w in (self.n_samples, self.want_mean, self.want_variance, self.want_median, self.want_samples,
                  self.want_uncertain, self.uncertain_threshold):
            w.setEnabled(sampled)

    def _prepare(self):
        """(model, layer, data, axes) for the current choices; None while a job runs, or after reporting
        what is missing."""
        if self.worker is not None:
            return None
        layer = self.image_combo.current_layer()
        problem = check_image_layer(layer)
        if problem:
            report(self.status, problem, "error")
            return None
        try:
            model = self.current_model()
        except Exception as exc:  # noqa: BLE001
            report(self.status, describe_error(exc), "error")
            return None
        if model is None:
            report(self.status, "Choose a model: train one, load a file, or use the shipped stripes model.", "error")
            return None
        self._show_axes_guess()  # the model may be known only now (a file loaded on first use)
        axes = self.axes.text().strip().upper() or default_axes(layer, model.config.spatial_dims)
        return model, layer, layer_array(layer, lazy=True), axes

    def _suggest_files(self) -> None:
        """Large or lazy layers go to files by default, beside the layer's file when it has one."""
        layer = self.image_combo.current_layer()
        if layer is None:
            return
        self.to_files.setChecked(is_large(layer))
        source = getattr(getattr(layer, "source", None), "path", None)
        folder = Path(source).parent if source else Path.home() / "napari-cosdd"
        if not self.out_folder.text().strip() or self.out_folder.property("suggested"):
            self.out_folder.setText(str(folder))
            self.out_folder.setProperty("suggested", True)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the OME-Zarr outputs", self.out_folder.text())
        if folder:
            self.out_folder.setText(folder)
            self.out_folder.setProperty("suggested", False)

    def _output_store(self, layer, axes: str):
        """ZarrOutputs for the layer when outputs go to files, else None (numpy layers in memory)."""
        if not self.to_files.isChecked():
            return None
        from ..engine.stores import ZarrOutputs

        folder = Path(self.out_folder.text().strip() or Path.home() / "napari-cosdd").expanduser()
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in layer.name)
        scale = {a: float(v) for a, v in zip(axes, layer.scale)}
        units = getattr(layer, "units", None)
        units = {a: str(u) for a, u in zip(axes, units)} if units is not None else None
        return ZarrOutputs(folder, stem, scale=scale, units=units)

    def start(self) -> None:
        prepared = self._prepare()
        if prepared is None:
            return
        model, layer, data, axes = prepared
        sampled = self.method.currentText() == "sample"
        options = dict(method=self.method.currentText(), n_samples=self.n_samples.value(),
                       variance=sampled and self.want_variance.isChecked(),
                       median=sampled and self.want_median.isChecked(),
                       keep_samples=sampled and self.want_samples.isChecked(),
                       tile=self.tile.value() or None, device="auto", seed=0,
                       out=self._output_store(layer, axes))
        try:  # check the layer against the model before starting a thread (values, channels, dimensions)
            from ..engine.inference import check_model_input

            check_model_input(model, data, axes)
        except Exception as exc:  # noqa: BLE001
            report(self.status, describe_error(exc), "error")
            return
        # Everything the results need is captured now: deleting the layer meanwhile is harmless.
        self._job = dict(source=layer.name, like=layer_geometry(layer),
                         want_mean=not sampled or self.want_mean.isChecked(),
                         uncertain=(self.uncertain_threshold.value() if sampled and self.want_variance.isChecked()
                                    and self.want_uncertain.isChecked() else None))
        from ..engine.inference import denoise_iter

        self._start_worker(denoise_iter(model, data, axes, **options), self._on_result)
        report(self.status, f"Denoising '{layer.name}' ({options['method']})...")

    def _start_worker(self, gen, on_result) -> None:
        """Run an engine generator in a thread worker: progress to the bar, the result to on_result,
        errors as messages, Cancel stops it at its next event."""
        self._cancel = threading.Event()
        # Errors are ours to report (as messages): _ignore_errors keeps superqt from re-raising them.
        self.worker = create_worker(guarded, gen, self._cancel, _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(on_result)
        self.worker.errored.connect(lambda exc: report(self.status, describe_error(exc), "error"))
        self.worker.finished.connect(self._on_finished)
        self.destroyed.connect(self._cancel.set)
        self._set_running(True)
        self.progress.setValue(0)
        self.worker.start()

    def cancel(self) -> None:
        """Stop at the next tile; the source layer and existing outputs stay as they were."""
        if self.worker is not None:
            self._cancel.set()
            self.status.setText("Cancelling...")

    def _on_progress(self, ev) -> None:
        self.progress.setValue(int(1000 * ev.fraction))
        if ev.message:
            self.status.setText(ev.message)

    def _on_result(self, result) -> None:
        if result is None:  # cancelled
            return
        job = self._job
        src, like = job["source"], job["like"]
        for name, array in result.outputs().items():  # outputs in files: lazy layers that read from them
            setattr(result, name, lazy_view(array))
        names = []
        if result.direct is not None:
            names.append(self._put(result.direct, f"{src}_cosdd_direct", like))
        if result.mean is not None and job["want_mean"]:
            names.append(self._put(result.mean, f"{src}_cosdd_mean", like))
        note = ""
        if result.variance is not None:
            calibrated = result.info.get("std", {}).get("calibrated", False)
            # Only a calibrated std is called one: otherwise it is the samples' spread, not an error bar.
            std_name, var_name = (("std_calibrated", "variance_calibrated") if calibrated
                                  else ("spread_std", "spread_variance"))
            info = {"cosdd_std": result.info.get("std", {})}
            names.append(self._put(result.variance, f"{src}_cosdd_{var_name}", like, colormap="magma",
                                   metadata=info, visible=False))
            names.append(self._put(result.std, f"{src}_cosdd_{std_name}", like, colormap="magma", metadata=info))
            note = (" The std is calibrated against " + result.info["std"].get("fitted_on", "a reference") + "."
                    if calibrated else " The std is the posterior samples' spread, uncalibrated: not an error "
                    "bar until you calibrate it (Uncertainty calibration).")
            threshold = job.get("uncertain")
            if threshold is not None:
                marked = (result.std > threshold).astype(np.uint8)
                name = f"{src}_cosdd_{'std' if calibrated else 'spread'}_above_{threshold:g}"
                names.append(self._put(marked, name, like, labels=True, opacity=0.5))
                if isinstance(marked, np.ndarray):  # a lazy one is only read where it is shown
                    note += f" {100 * marked.mean():.1f} % of pixels have a std above {threshold:g}."
        if result.median is not None:
            names.append(self._put(result.median, f"{src}_cosdd_median", like))
        if result.samples is not None:
            names.append(self._put(result.samples, f"{src}_cosdd_samples", like))
        if result.info.get("paths"):
            note += " Written to " + str(Path(next(iter(result.info["paths"].values()))).parent) + "."
        check = result.check
        if check is not None and not check.ok:
            report(self.status, "Done: " + ", ".join(names) + ". Warning: " + check.message + "." + note, "warning")
        else:
            report(self.status, "Done: " + ", ".join(names) + "." + note)

    def _put(self, data: np.ndarray, name: str, like: dict, **kwargs) -> str:
        put_layer(self.viewer, data, name, like=like, **kwargs)
        return name

    def _on_finished(self) -> None:
        if self._cancel.is_set():
            report(self.status, "Cancelled; no layer was changed.")
        self.worker = None
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.denoise_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.noise_button.setEnabled(not running)
        self.load_button.setEnabled(not running)
        self.calibrate_button.setEnabled(not running)
        self.save_model_button.setEnabled(not running)
        self.export_button.setEnabled(not running)

    # ------------------------------------------------------------------ uncertainty calibration

    def _suggest_threshold(self) -> None:
        """Until the user sets it, the std threshold is 5 % of the image's contrast range (its units)."""
        layer = self.image_combo.current_layer()
        if layer is None or not self._threshold_is_suggested:
            return
        low, high = layer.contrast_limits
        self.uncertain_threshold.blockSignals(True)
        self.uncertain_threshold.setValue(float(f"{0.05 * max(high - low, 1e-9):.3g}"))
        self.uncertain_threshold.blockSignals(False)

    def _threshold_edited(self, *_) -> None:
        self._threshold_is_suggested = False

    def _show_calibration_state(self) -> None:
        key = self.model_combo.currentData()
        model = self.session.model if key == SESSION_KEY else self._models.get(key)
        cal = getattr(model, "calibration", None)
        if cal is None:
            self.calibration_state.setText("The chosen model's std is not calibrated: it is the spread of its "
                                           "posterior samples.")
        else:
            self.calibration_state.setText(f"The chosen model's std is calibrated ({cal.describe()}, fitted on "
                                           f"{cal.fitted_on}).")

    def calibrate(self) -> None:
        """Fit the std's scale against the reference layer and/or the background labels, in a worker."""
        from ..engine.inference import calibrate_iter

        prepared = self._prepare()
        if prepared is None:
            return
        model, layer, data, axes = prepared
        reference_layer = self.reference_combo.current_layer()
        background_layer = self.background_combo.current_layer()
        if reference_layer is None and background_layer is None:
            report(self.status, "Choose a reference image (a low-noise image of the same field) or a labels layer "
                                "painted over flat background, then Calibrate std.", "error")
            return
        if reference_layer is not None and reference_layer.name == layer.name:
            report(self.status, "The reference must be another image than the one calibrated.", "error")
            return
        reference = layer_array(reference_layer) if reference_layer is not None else None
        background = np.asarray(background_layer.data) != 0 if background_layer is not None else None
        try:
            gen = calibrate_iter(model, data, axes, reference=reference, background=background,
                                 n_samples=self.n_samples.value(), match=self.match.currentText(),
                                 tile=self.tile.value() or None, device="auto", seed=0)
        except Exception as exc:  # noqa: BLE001
            report(self.status, describe_error(exc), "error")
            return
        parts = [] if reference_layer is None else [f"'{reference_layer.name}'"]
        parts += [] if background_layer is None else [f"the background in '{background_layer.name}'"]
        what = " and ".join(parts)
        self._calibration_job = dict(model=model, image=layer.name, against=what)
        self._start_worker(gen, self._on_calibration)
        report(self.status, f"Calibrating the std on '{layer.name}' against {what} "
                            f"({self.n_samples.value()} samples)...")

    def _on_calibration(self, result) -> None:
        if result is None:  # cancelled
            return
        job = self._calibration_job
        result.calibration.fitted_on = f"{job['against']} for '{job['image']}' ({result.calibration.fitted_on})"
        job["model"].calibration = result.calibration
        self.calibration_plot.set_bins(result.before[0], result.after[0])
        self.calibration_plot.setVisible(True)
        self._show_calibration_state()
        report(self.status, "Calibrated: " + result.message + ". Denoise with samples and std to get calibrated "
                            "std layers; Save model... keeps the calibration in a file.")

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save COSDD model", "", MODEL_FILTER)
        if path:
            self.save_model_to(path)

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export to bioimage.io", "", "bioimage.io model (*.zip)")
        if path:
            self.export_to(path if path.lower().endswith(".zip") else path + ".zip")

    def export_to(self, path) -> bool:
        """Export the chosen model's Direct Denoiser in a worker, with test data from the chosen image;
        True when the export started (the status line says how it ended)."""
        from ..engine.export import export_bioimageio_iter

        prepared = self._prepare()
        if prepared is None:
            return False
        model, layer, data, axes = prepared
        try:
            gen = export_bioimageio_iter(model, path, data, axes, name=f"COSDD Direct Denoiser ({layer.name})")
        except Exception as exc:  # noqa: BLE001
            report(self.status, describe_error(exc), "error")
            return False
        source = layer.name
        self._start_worker(gen, lambda written: written is not None and report(
            self.status, f"Exported the Direct Denoiser to {Path(written).name} (bioimage.io model; test images "
                         f"from '{source}')."))
        report(self.status, f"Exporting the Direct Denoiser to {Path(path).name}...")
        return True

    def save_model_to(self, path) -> bool:
        """Write the chosen model (with its calibration) to `path`; a message either way."""
        from ..engine.model_file import save_model

        try:
            model = self.current_model()
            if model is None:
                raise ValueError("There is no model to save: train one or load a model file first.")
            save_model(model, path)
        except Exception as exc:  # noqa: BLE001
            report(self.status, describe_error(exc), "error")
            return False
        report(self.status, f"Saved the model to {Path(path).name}.")
        return True

    # ------------------------------------------------------------------ noise check

    def _current_plane(self, layer, data: np.ndarray, spatial_dims: int) -> np.ndarray:
        """The plane (or volume) of a stack that the viewer shows now."""
        leading = data.ndim - spatial_dims
        if leading <= 0:
            return data
        position = layer.world_to_data(self.viewer.dims.point)
        index = tuple(int(np.clip(round(p), 0, s - 1)) for p, s in zip(position[:leading], data.shape[:leading]))
        return data[index]

    def generate_noise(self) -> None:
        """Draw new noise from the model around the shown plane's signal, in a worker (progress, Cancel)."""
        from ..engine.noise_check import check_noise_iter

        prepared = self._prepare()
        if prepared is None:
            return
        model, layer, data, axes = prepared
        try:
            plane = self._current_plane(layer, data, model.config.spatial_dims)
            spatial_axes = "ZYX" if model.config.spatial_dims == 3 else "YX"
            gen = check_noise_iter(model, plane, spatial_axes, device="auto")
        except Exception as exc:  # noqa: BLE001
            report(self.status, describe_error(exc), "error")
            return
        # What the result needs from the layer, captured now: deleting the layer meanwhile is harmless.
        self._noise_job = dict(name=layer.name, plane_shape=plane.shape, scale=list(layer.scale),
                               translate=list(layer.translate))
        self._start_worker(gen, self._on_noise_result)
        report(self.status, f"Drawing new noise from the model on '{layer.name}'...")

    def _on_noise_result(self, result) -> None:
        if result is None:  # cancelled
            return
        job = self._noise_job
        generated = result.generated[0]
        offset = [(s - g) // 2 for s, g in zip(job["plane_shape"], generated.shape)]
        scale = job["scale"][-generated.ndim:]
        translate = [t + o * sc for t, o, sc in zip(job["translate"][-generated.ndim:], offset, scale)]
        name = f"{job['name']}_cosdd_generated_noise"
        put_layer(self.viewer, generated, name, scale=scale, translate=translate)
        profiles, dashed = {}, set()
        for a in result.real_autocorrelation.profiles:
            profiles[f"real, along {a}"] = result.real_autocorrelation.profiles[a]
            profiles[f"generated, along {a}"] = result.generated_autocorrelation.profiles[a]
            dashed.add(f"generated, along {a}")
        self.noise_profiles.set_profiles(profiles, dashed)
        self.noise_profiles.setVisible(True)
        self.noise_summary.setText(result.summary().splitlines()[-1])
        report(self.status, f"Generated noise added as '{name}'; the plot compares its autocorrelation "
                            "(dashed) with the real noise's.")

    def closeEvent(self, event) -> None:
        if self.worker is not None:
            self._cancel.set()
        super().closeEvent(event)
