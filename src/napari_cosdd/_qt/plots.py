"""Plots drawn with pyqtgraph: the training losses, autocorrelation profiles, and the std calibration."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QVBoxLayout, QWidget

# (event part, loss name, label, colour, dashed)
LOSS_CURVES = (
    ("train", "elbo", "train ELBO", "#4c9be8", False),
    ("val", "elbo", "validation ELBO", "#f0a030", False),
    ("val", "signal", "signal decoder (val)", "#59c27a", True),
    ("val", "direct", "Direct Denoiser (val)", "#d0d0d0", True),
)


def _plot_widget(height: int) -> pg.PlotWidget:
    plot = pg.PlotWidget(background=None)
    plot.setMinimumHeight(height)
    plot.showGrid(x=True, y=True, alpha=0.2)
    plot.addLegend(offset=(-5, 5), labelTextSize="8pt")
    return plot


KL_COLOURS = ("#c678dd", "#e06c5a", "#56b6c2", "#e5c07b", "#98c379", "#61afef")


class LossPlot(QWidget):
    """Training and validation losses against the step, with a log-scale switch; below them the KL of
    the latents (total and per level), on a log scale, with the line under which they count as dead.

    A collapsed model can have a good ELBO; only the KL shows that its latents carry nothing."""

    def __init__(self, parent: QWidget | None = None, collapse_kl: float | None = None) -> None:
        super().__init__(parent)
        self.plot = _plot_widget(180)
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "loss (nats/pixel)")
        self.kl_plot = _plot_widget(120)
        self.kl_plot.setLabel("bottom", "step")
        self.kl_plot.setLabel("left", "latent KL (nats/pixel)")
        self.kl_plot.setLogMode(y=True)
        self.kl_plot.getAxis("left").enableAutoSIPrefix(False)  # plain nats per pixel, no "(x0.001)"
        self.kl_plot.setXLink(self.plot)
        self.kl_curves: dict[str, pg.PlotDataItem] = {}
        self.kl_points: dict[str, tuple[list, list]] = {}
        self.collapse_line = None
        if collapse_kl:
            self.collapse_line = self.kl_plot.addLine(
                y=float(np.log10(collapse_kl)), pen=pg.mkPen("#e06c5a", width=1, style=pg.QtCore.Qt.PenStyle.DotLine))
        self.log_scale = QCheckBox("log scale")
        self.log_scale.toggled.connect(self._set_log)
        self.curves = {}
        self.points: dict[tuple[str, str], tuple[list, list]] = {}
        for part, key, label, colour, dashed in LOSS_CURVES:
            pen = pg.mkPen(colour, width=2, style=pg.QtCore.Qt.PenStyle.DashLine if dashed else None)
            self.curves[(part, key)] = self.plot.plot([], [], name=label, pen=pen)
            self.points[(part, key)] = ([], [])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        layout.addWidget(self.kl_plot)
        row = QHBoxLayout()
        row.addStretch()
        row.addWidget(self.log_scale)
        layout.addLayout(row)

    def _set_log(self, on: bool) -> None:
        self.plot.setLogMode(y=on)

    def add_event(self, ev) -> None:
        """Add the losses of a training event (train every step event, validation when it has one).

        The log scale needs positive values: the ELBO can be negative, so points <= 0 are left out
        of a curve while the log scale is on (they stay in the data)."""
        sources = {"train": ev.train if ev.kind in ("step", "validation") else None,
                   "val": ev.val if ev.kind in ("validation", "done") else None}
        for (part, key), (xs, ys) in self.points.items():
            values = sources[part]
            if not values or key not in values:
                continue
            if xs and xs[-1] == ev.step:
                continue
            xs.append(ev.step)
            ys.append(float(values[key]))
        if ev.kind == "validation" and ev.val:
            self._add_kl(ev.step, ev.val)
        self._redraw()

    def _add_kl(self, step: int, val: dict) -> None:
        names = ["kl"] + sorted((k for k in val if k.startswith("kl_") and k[3:].isdigit()), key=lambda k: int(k[3:]))
        for name in names:
            if name not in self.kl_curves:
                total = name == "kl"
                colour = "#f0a030" if total else KL_COLOURS[int(name[3:]) % len(KL_COLOURS)]
                label = "validation KL, total" if total else f"level {int(name[3:]) + 1}"
                pen = pg.mkPen(colour, width=2 if total else 1,
                               style=None if total else pg.QtCore.Qt.PenStyle.DashLine)
                self.kl_curves[name] = self.kl_plot.plot([], [], name=label, pen=pen)
                self.kl_points[name] = ([], [])
            xs, ys = self.kl_points[name]
            if not xs or xs[-1] != step:
                xs.append(step)
                ys.append(float(val[name]))

    def _redraw(self) -> None:
        for key, curve in self.curves.items():
            xs, ys = self.points[key]
            x, y = np.asarray(xs, float), np.asarray(ys, float)
            if self.log_scale.isChecked():
                keep = y > 0
                x, y = x[keep], y[keep]
            curve.setData(x, y)
        for name, curve in self.kl_curves.items():
            x, y = (np.asarray(v, float) for v in self.kl_points[name])
            keep = y > 0  # log scale
            curve.setData(x[keep], y[keep])

    def clear(self) -> None:
        for xs, ys in list(self.points.values()) + list(self.kl_points.values()):
            xs.clear()
            ys.clear()
        self._redraw()

    def point_count(self) -> int:
        return sum(len(xs) for xs, _ in self.points.values())


class ProfilePlot(QWidget):
    """Correlation against lag for several named profiles (e.g. along x and y, real and generated)."""

    COLOURS = ("#4c9be8", "#f0a030", "#59c27a", "#d0d0d0", "#c678dd", "#e06c5a")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = _plot_widget(150)
        self.plot.setLabel("bottom", "lag (pixels)")
        self.plot.setLabel("left", "correlation")
        self.plot.addLine(y=0, pen=pg.mkPen("#888888", width=1))
        self.curves: dict[str, pg.PlotDataItem] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def set_profiles(self, profiles: dict[str, np.ndarray], dashed: set[str] = frozenset()) -> None:
        for curve in self.curves.values():
            self.plot.removeItem(curve)
        self.curves.clear()
        legend = self.plot.plotItem.legend
        if legend is not None:
            legend.clear()
        for i, (name, values) in enumerate(profiles.items()):
            style = pg.QtCore.Qt.PenStyle.DashLine if name in dashed else pg.QtCore.Qt.PenStyle.SolidLine
            pen = pg.mkPen(self.COLOURS[i % len(self.COLOURS)], width=2, style=style)
            self.curves[name] = self.plot.plot(np.arange(len(values)), np.asarray(values, float), name=name,
                                               pen=pen, symbol="o", symbolSize=4,
                                               symbolBrush=self.COLOURS[i % len(self.COLOURS)])


class CalibrationPlot(QWidget):
    """The real error (RMSE) against the predicted std (RMV) in bins of predicted std, before and after
    calibration, with the identity line on which a calibrated std lies."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = _plot_widget(170)
        self.plot.setLabel("bottom", "predicted std (RMV)")
        self.plot.setLabel("left", "real error (RMSE)")
        self.items: list = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def set_bins(self, before, after) -> None:
        """`before` and `after`: Reliability objects (engine.calibration) of one channel."""
        for item in self.items:
            self.plot.removeItem(item)
        legend = self.plot.plotItem.legend
        if legend is not None:
            legend.clear()
        top = float(max(np.max(before.rmv), np.max(after.rmv), np.max(after.rmse))) * 1.05
        dashed = pg.mkPen("#888888", width=1, style=pg.QtCore.Qt.PenStyle.DashLine)
        self.items = [
            self.plot.plot([0, top], [0, top], pen=dashed, name="calibrated: RMSE = RMV"),
            self.plot.plot(before.rmv, before.rmse, pen=pg.mkPen("#f0a030", width=2), symbol="o", symbolSize=5,
                           symbolBrush="#f0a030", name=f"samples' spread (ENCE {before.ence:.2f})"),
            self.plot.plot(after.rmv, after.rmse, pen=pg.mkPen("#4c9be8", width=2), symbol="o", symbolSize=5,
                           symbolBrush="#4c9be8", name=f"calibrated (ENCE {after.ence:.2f})"),
        ]
        self.plot.setXRange(0, top)
        self.plot.setYRange(0, top)
