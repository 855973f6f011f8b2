"""The package and its engine load without Qt or napari (napari finds the widgets via the manifest)."""

import subprocess
import sys

CHECK = r"""
import importlib
import pkgutil
import sys
import napari_cosdd
import napari_cosdd.engine
engine = [m.name for m in pkgutil.walk_packages(napari_cosdd.engine.__path__, "napari_cosdd.engine.")]
assert "napari_cosdd.engine.nets.model" in engine and "napari_cosdd.engine.calibration" in engine, engine
for name in engine + ["napari_cosdd.synthetic", "napari_cosdd.cli"]:
    importlib.import_module(name)
napari_cosdd.Trainer, napari_cosdd.denoise, napari_cosdd.load_model
gui = [m for m in sys.modules if m.split('.')[0] in
       ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'superqt', 'magicgui', 'vispy')]
print(','.join(gui))
"""


def test_engine_imports_no_qt_and_no_napari():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"GUI modules loaded by the engine: {out.stdout}"


def test_plain_import_does_not_load_torch():
    code = "import sys, napari_cosdd; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
