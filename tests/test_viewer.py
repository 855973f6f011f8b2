"""The plugin in a full napari viewer (needs a display: the test command runs under Xvfb).

What napari itself does with the plugin: the manifest validates, File > Open Sample gives the layers,
Plugins > napari-cosdd docks the three widgets, and the shipped model denoises the sample in seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

PLUGIN = "napari-cosdd"


def test_manifest_validates_with_imports():
    npe2 = shutil.which("npe2") or f"{sys.executable} -m npe2"
    result = subprocess.run(f"{npe2} validate {PLUGIN} --imports", shell=True, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


@pytest.mark.parametrize("key, layer", [("stripes", "stripes (noisy)"), ("checkerboard", "checkerboard (noisy)"),
                                        ("camera", "camera (noisy)"), ("stripes_stack", "stripes stack (noisy)")])
def test_open_sample_menu_entries(make_napari_viewer, key, layer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, key)
    assert layer in viewer.layers
    assert viewer.layers.selection.active.name == layer  # the noisy layer is on top and selected


def test_widgets_dock_and_the_shipped_model_denoises_the_sample(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "stripes")
    docked = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in ("Noise", "Train", "Denoise")}
    noise, denoise = docked["Noise"], docked["Denoise"]
    noise.compute()
    assert noise.result.orientation == "x"
    assert docked["Train"].selected_names() == ["stripes (noisy)"]
    denoise.model_combo.setCurrentIndex(denoise.model_combo.findData("pretrained:stripes"))
    denoise.denoise_button.click()
    qtbot.waitUntil(lambda: denoise.worker is None, timeout=60_000)
    out = viewer.layers["stripes (noisy)_cosdd_direct"].data
    clean = viewer.layers["stripes (ground truth)"].data
    noisy = viewer.layers["stripes (noisy)"].data
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
    shot = viewer.screenshot(str(tmp_path / "window.png"), canvas_only=False)
    assert shot.ndim == 3 and shot.shape[0] > 300 and shot[..., :3].std() > 5  # a real, drawn window


def test_a_users_clicks_in_one_window_noise_train_denoise(make_napari_viewer, qtbot):
    """The three widgets docked the way napari docks them (each gets its own proxy of the viewer), and
    one user's path through them: the orientation picked in Noise reaches Train, the model trained in
    Train reaches Denoise, and its outputs appear as layers."""
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "stripes")
    src = "stripes (noisy)"
    docked = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in ("Noise", "Train", "Denoise")}
    noise, train, denoise = docked["Noise"], docked["Train"], docked["Denoise"]
    assert noise.session is train.session is denoise.session

    noise.image_combo.setCurrentIndex(noise.image_combo.findText(src))
    noise.compute_button.click()
    qtbot.waitUntil(lambda: noise.use_button.isEnabled(), timeout=60_000)
    train.orientation.setCurrentText("none")
    noise.use_button.click()
    assert train.orientation.currentText() == "x"

    train.select_layers([src])
    train.preset.setCurrentText("tiny")
    train.steps.setValue(8)
    train.minutes.setValue(0)
    train.advanced_form["crop_size"].value = 32
    train.advanced_form["val_every"].value = 4
    train.device.setCurrentIndex(train.device.findData("cpu"))
    train.train_button.click()
    qtbot.waitUntil(lambda: train.worker is None, timeout=120_000)
    assert train.model is not None, train.status.text()
    assert denoise.model_combo.currentData() == "session", "the trained model reached the Denoise widget"
    assert denoise.session.model is train.model

    denoise.image_combo.setCurrentIndex(denoise.image_combo.findText(src))
    denoise.method.setCurrentText("sample")
    denoise.n_samples.setValue(3)
    denoise.denoise_button.click()
    qtbot.waitUntil(lambda: denoise.worker is None, timeout=120_000)
    for suffix in ("mean", "spread_variance", "spread_std"):
        out = viewer.layers[f"{src}_cosdd_{suffix}"]
        assert out.data.shape == viewer.layers[src].data.shape and np.isfinite(out.data).all()


def test_cli_demo_opens_the_sample_with_the_widgets_docked(qtbot):
    from napari_cosdd.cli import _demo_gui

    viewer = _demo_gui(lambda text: None, block=False)
    try:
        assert "stripes (noisy)" in viewer.layers
        docked = [name for name in viewer.window.dock_widgets if "napari-cosdd" in name]
        assert len(docked) == 3, docked
    finally:
        viewer.close()
