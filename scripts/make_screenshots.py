"""Screenshots for docs/quickstart.md, taken from a real napari window driven like a user would.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshots.py --out docs/images

Opens the stripes sample, docks the plugin's widgets, computes the noise autocorrelation, trains for
a short while (live loss plot), denoises with the shipped model and with posterior samples, calibrates
the std against the sample's ground truth and marks the uncertain pixels, and saves one PNG per step.
Look at every image before committing it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-cosdd"


def settle(seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait_for(widget, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while widget.worker is not None and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.05)
    settle()


def show_only(viewer, *names: str) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/images")
    p.add_argument("--train-seconds", type=float, default=45)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-cosdd", show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.window._qt_window.setMaximumHeight(1000)
    viewer.open_sample(PLUGIN, "stripes")
    src = "stripes (noisy)"
    dock_noise, noise = viewer.window.add_plugin_dock_widget(PLUGIN, "Noise")
    settle(1)

    def shot(name: str, dock) -> None:
        for d in (dock_noise, dock_train, dock_denoise):
            if d is not None:
                d.setVisible(d is dock)
        dock.setMinimumWidth(430)
        settle(1)
        viewer.screenshot(str(out / name), canvas_only=False)
        print("wrote", out / name, flush=True)

    dock_train = dock_denoise = None
    viewer.layers.selection.active = viewer.layers[src]
    noise.compute()
    show_only(viewer, f"{src}_cosdd_autocorrelation")
    viewer.camera.center = (0.0, 0.0)  # the map's coordinates are the lags: centre on lag 0
    viewer.camera.zoom = 8
    shot("01_noise_autocorrelation.png", dock_noise)

    show_only(viewer, src)
    viewer.layers.selection.active = viewer.layers[src]
    viewer.reset_view()
    dock_train, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    train.preset.setCurrentText("cpu")
    train.minutes.setValue(args.train_seconds / 60)
    train.steps.setValue(0)
    train.advanced_form["val_every"].value = 10
    train.train_button.click()
    settle(args.train_seconds * 0.6)
    shot("02_training.png", dock_train)
    wait_for(train)

    dock_denoise, denoise = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    denoise.model_combo.setCurrentIndex(denoise.model_combo.findData("pretrained:stripes"))
    denoise.image_combo.setCurrentIndex(denoise.image_combo.findText(src))
    denoise.denoise_button.click()
    wait_for(denoise)
    show_only(viewer, src, f"{src}_cosdd_direct")
    viewer.grid.enabled = True
    viewer.reset_view()
    shot("03_direct_denoising.png", dock_denoise)

    denoise.method.setCurrentText("sample")
    denoise.n_samples.setValue(8)
    denoise.want_samples.setChecked(True)
    denoise.denoise_button.click()
    wait_for(denoise)
    show_only(viewer, f"{src}_cosdd_samples", f"{src}_cosdd_spread_std")
    viewer.reset_view()
    shot("04_posterior_samples.png", dock_denoise)

    # Calibrate the std against the sample's ground truth, then mark the pixels with a large std.
    denoise.want_samples.setChecked(False)
    denoise.calibration_section.expand(animate=False)
    denoise.reference_combo.setCurrentIndex(denoise.reference_combo.findText("stripes (ground truth)"))
    denoise.calibrate_button.click()
    wait_for(denoise)
    denoise.want_uncertain.setChecked(True)
    denoise.uncertain_threshold.setValue(0.06)  # the shipped model's std spans about 0.02-0.09 here
    denoise.denoise_button.click()
    wait_for(denoise)
    marked = next(layer.name for layer in viewer.layers if layer.name.startswith(f"{src}_cosdd_std_above_"))
    viewer.grid.enabled = False
    show_only(viewer, f"{src}_cosdd_std_calibrated", marked)  # the marked pixels over the calibrated std
    viewer.reset_view()
    shot("06_calibrated_std.png", dock_denoise)
    denoise.calibration_section.collapse(animate=False)

    viewer.grid.enabled = False
    show_only(viewer, src)
    denoise.method.setCurrentText("direct")
    denoise.noise_button.click()
    wait_for(denoise)  # it runs in a worker now, like denoising
    show_only(viewer, f"{src}_cosdd_generated_noise")
    viewer.reset_view()
    shot("05_generated_noise.png", dock_denoise)
    viewer.close()


if __name__ == "__main__":
    main()
