"""Model files: exact round trip, safe loading, clear errors."""

import os

import numpy as np
import pytest
import torch

from napari_cosdd import __version__
from napari_cosdd.engine.inference import denoise
from napari_cosdd.engine.model_file import ModelFileError, load_model, read_model_file, save_model


def test_round_trip_gives_identical_outputs(tiny_model, stripes_small, tmp_path):
    path = save_model(tiny_model, tmp_path / "m.cosdd")
    again = load_model(path)
    img = stripes_small[0][0]
    a = denoise(tiny_model, img, "YX", device="cpu").direct
    b = denoise(again, img, "YX", device="cpu").direct
    assert np.array_equal(a, b)
    assert again.config == tiny_model.config
    assert torch.equal(again.data_mean, tiny_model.data_mean) and torch.equal(again.data_std, tiny_model.data_std)
    assert again.history and again.history[0]["steps"] == 30


def test_file_holds_config_summary_and_version(tiny_model, tmp_path):
    path = save_model(tiny_model, tmp_path / "m.cosdd", extra={"axes": "YX"})
    payload = torch.load(path, weights_only=True)  # loads with the safe loader
    assert payload["package_version"] == __version__
    assert payload["model_config"]["orientation"] == "x"
    assert payload["extra"] == {"axes": "YX"}


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_files_that_would_run_code_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.cosdd"
    torch.save({"format": "napari-cosdd-model", "payload": _Evil()}, path)
    with pytest.raises(ModelFileError, match="no code in it could run"):
        load_model(path)
    assert "must never run" not in capsys.readouterr().out


def test_corrupted_file(tiny_model, tmp_path):
    path = save_model(tiny_model, tmp_path / "m.cosdd")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupted"):
        load_model(path)


def test_non_model_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelFileError):
        load_model(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ModelFileError, match="not a napari-cosdd model"):
        load_model(other)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.cosdd")


def _saved_with_format(model, path, version):
    path = save_model(model, path)
    payload = read_model_file(path)
    payload["format_version"] = version
    torch.save(payload, path)
    return path


def test_newer_format_asks_for_an_upgrade(tiny_model, tmp_path):
    with pytest.raises(ModelFileError, match="Upgrade napari-cosdd"):
        load_model(_saved_with_format(tiny_model, tmp_path / "m.cosdd", 99))


def test_older_format_asks_for_retraining(tiny_model, tmp_path):
    """Files of the earlier, lighter networks cannot fill these ones: the message says to train again."""
    with pytest.raises(ModelFileError, match="train the model again"):
        load_model(_saved_with_format(tiny_model, tmp_path / "m.cosdd", 1))


def _untrained(direct_norm):
    from napari_cosdd.engine.config import model_config_from_preset
    from napari_cosdd.engine.nets.model import COSDD

    torch.manual_seed(0)
    model = COSDD(model_config_from_preset("tiny", 32, orientation="x", direct_norm=direct_norm))
    model.set_normalisation([0.5], [0.2])
    return model.eval()


def test_format_2_files_load_with_the_batchnorm_they_were_made_with(stripes_small, tmp_path):
    """Format 2 left out direct_norm (every Direct Denoiser then used BatchNorm): such a file still opens,
    as BatchNorm, and denoises exactly as before, whatever the current default."""
    model = _untrained("batch")
    path = _saved_with_format(model, tmp_path / "m.cosdd", 2)
    payload = torch.load(path, weights_only=True)
    del payload["model_config"]["direct_norm"]
    torch.save(payload, path)
    again = load_model(path)
    assert again.config.direct_norm == "batch"
    img = stripes_small[0][0]
    assert np.array_equal(denoise(again, img, "YX", device="cpu").direct,
                          denoise(model, img, "YX", device="cpu").direct)


@pytest.mark.parametrize("direct_norm", ["batch", "pixel", "none"])
def test_every_direct_norm_round_trips(direct_norm, stripes_small, tmp_path):
    model = _untrained(direct_norm)
    again = load_model(save_model(model, tmp_path / "m.cosdd"))
    assert again.config.direct_norm == direct_norm
    img = stripes_small[0][0]
    assert np.array_equal(denoise(again, img, "YX", device="cpu").direct,
                          denoise(model, img, "YX", device="cpu").direct)


def test_saving_never_leaves_a_half_written_file(tiny_model, tmp_path, monkeypatch):
    path = save_model(tiny_model, tmp_path / "m.cosdd")
    good = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_model(tiny_model, path)
    assert path.read_bytes() == good
    assert not list(tmp_path.glob("*.part"))


def test_saved_file_gets_ordinary_permissions(tiny_model, tmp_path):
    """Written through a private temporary file, the model must still be readable like any new file."""
    old = os.umask(0o022)
    try:
        path = save_model(tiny_model, tmp_path / "m.cosdd")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
