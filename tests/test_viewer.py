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


def test_cli_demo_opens_the_sample_with_the_widgets_docked(qtbot):
    from napari_cosdd.cli import _demo_gui

    viewer = _demo_gui(lambda text: None, block=False)
    try:
        assert "stripes (noisy)" in viewer.layers
        docked = [name for name in viewer.window.dock_widgets if "napari-cosdd" in name]
        assert len(docked) == 3, docked
    finally:
        viewer.close()
