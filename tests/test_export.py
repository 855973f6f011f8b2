"""The bioimage.io export of the Direct Denoiser, checked with bioimageio.core's own model test."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from napari_cosdd.engine.data import InputError
from napari_cosdd.engine.export import architecture_source, export_bioimageio
from napari_cosdd.engine.inference import denoise

import bioimageio.core as bioimageio_core  # a test dependency (the testing extra), never of the package


@pytest.fixture(scope="module")
def exported(tiny_model, stripes_small, tmp_path_factory):
    noisy = stripes_small[0][:2]
    path = export_bioimageio(tiny_model, tmp_path_factory.mktemp("export") / "cosdd.zip", noisy, "SYX",
                             name="stripes test", authors=["A. Tester"])
    return path, noisy


@pytest.mark.parametrize("weights", ["pytorch_state_dict", "torchscript"])
def test_the_zip_passes_bioimageio_cores_model_test(exported, weights):
    summary = bioimageio_core.test_model(exported[0], weight_format=weights)
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    assert any("Reproduce test outputs" in d.name for d in summary.details)


def test_the_zip_declares_the_normalisation_citations_and_test_data_from_the_users_image(exported, tiny_model):
    path, noisy = exported
    with zipfile.ZipFile(path) as zf:
        rdf = json.loads(zf.read("rdf.yaml"))
        names = set(zf.namelist())
        test_in = np.load(zf.open("test_input.npy"))
        test_out = np.load(zf.open("test_output.npy"))
    assert {"weights.pt", "weights_torchscript.pt", "cover.png", "README.md", "cosdd_direct_denoiser.py"} <= names
    pre = rdf["inputs"][0]["preprocessing"][0]
    post = rdf["outputs"][0]["postprocessing"][0]
    assert pre["id"] == "fixed_zero_mean_unit_variance" and pre["kwargs"]["mean"] == pytest.approx(
        float(tiny_model.data_mean[0]))
    assert post["id"] == "scale_linear" and post["kwargs"]["gain"] == pytest.approx(float(tiny_model.data_std[0]))
    assert {c["url"] for c in rdf["cite"]} == {"https://arxiv.org/abs/2310.07887", "https://arxiv.org/abs/2310.18116"}
    assert rdf["outputs"][0]["axes"][-1]["halo"] > 0 and rdf["inputs"][0]["axes"][-1]["size"]["step"] == 4
    # The test input is a crop of the user's image, and the test output what our own inference makes of it.
    assert test_in.shape == (1, 1, 96, 96) and np.array_equal(test_in[0, 0], noisy[0].astype(np.float32))
    ours = denoise(tiny_model, test_in[0, 0], "YX", method="direct", device="cpu", tile=96).direct
    np.testing.assert_allclose(test_out[0, 0], ours, rtol=1e-4, atol=1e-4)


def test_the_architecture_file_needs_only_torch(tmp_path, tiny_model):
    (tmp_path / "arch.py").write_text(architecture_source())
    code = ("import sys, arch, torch; net = arch.DirectDenoiser(**%r); "
            "print(sorted(m for m in sys.modules if m.startswith('napari')))") % (
        type(tiny_model.direct_denoiser).arguments(tiny_model.config),)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", "the shipped architecture imports nothing of napari or napari-cosdd"
    assert "import torch" in architecture_source() and "napari_cosdd" not in architecture_source().split('"""')[2]


@pytest.mark.parametrize("norm", ["pixel", "none"])
def test_the_architecture_file_rebuilds_each_normalisation(tmp_path, norm):
    """The shipped file builds the same network for every direct_norm, so the weights fill it exactly."""
    import importlib.util

    import torch

    from napari_cosdd.engine.config import model_config_from_preset
    from napari_cosdd.engine.nets.model import COSDD

    (tmp_path / "arch_norm.py").write_text(architecture_source())
    spec = importlib.util.spec_from_file_location("arch_norm", tmp_path / "arch_norm.py")
    arch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arch)
    torch.manual_seed(0)
    config = model_config_from_preset("tiny", 32, orientation="x", direct_norm=norm)
    ours = COSDD(config).direct_denoiser.eval()
    kwargs = type(ours).arguments(config)
    assert kwargs["norm"] == norm
    shipped = arch.DirectDenoiser(**kwargs).eval()
    shipped.load_state_dict(ours.state_dict())  # strict: the same parameters and buffers, name for name
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(shipped(x), ours(x))


def test_a_model_without_a_direct_denoiser_is_refused(tmp_path):
    from napari_cosdd.engine.config import ModelConfig
    from napari_cosdd.engine.nets.model import COSDD

    model = COSDD(ModelConfig(levels=2, features=8, latent_channels=4, ar_filters=8, ar_dilations=(1,),
                              downsampling=(0, 1), direct_denoiser=False))
    with pytest.raises(InputError, match="no Direct Denoiser"):
        export_bioimageio(model, tmp_path / "m.zip", np.zeros((64, 64), np.float32), "YX")
    assert not (tmp_path / "m.zip").exists()
