"""Reading images with their axes and writing results in the same axes (napari_cosdd.engine.io)."""

import numpy as np
import pytest
import tifffile

from napari_cosdd.engine.data import InputError
from napari_cosdd.engine.io import default_axes, expand_paths, read_image, write_tiff


def test_imagej_axes_and_calibration_round_trip(tmp_path):
    data = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    src = tmp_path / "src.tif"
    tifffile.imwrite(src, data, imagej=True, metadata={"axes": "TCYX", "spacing": 2.0, "unit": "um"},
                     resolution=(2.0, 2.0))
    f = read_image(src)
    assert (f.axes, f.axes_source) == ("TCYX", "metadata")
    assert f.imagej == {"spacing": 2.0, "unit": "um"} and f.resolution == (2.0, 2.0)
    write_tiff(tmp_path / "out.tif", f.data * 2, f.axes, like=f)
    back = read_image(tmp_path / "out.tif")
    assert back.axes == "TCYX" and back.imagej["unit"] == "um" and back.resolution == (2.0, 2.0)
    np.testing.assert_array_equal(back.data, data * 2)


def test_ome_and_shaped_axes_are_read(tmp_path):
    data = np.zeros((3, 8, 8), np.uint16) + 5
    tifffile.imwrite(tmp_path / "a.ome.tif", data, ome=True, metadata={"axes": "ZYX"})
    assert read_image(tmp_path / "a.ome.tif").axes == "ZYX"
    write_tiff(tmp_path / "b.tif", data, "SYX")  # not an ImageJ order: shaped metadata
    assert read_image(tmp_path / "b.tif").axes == "SYX"


def test_plain_files_have_no_axes_until_given(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((4, 8, 8), np.float32))
    f = read_image(tmp_path / "a.npy")
    assert f.axes is None and f.axes_source == "none"
    assert read_image(tmp_path / "a.npy", "zyx").axes == "ZYX"
    assert default_axes(3) == "TYX" and default_axes(3, spatial_dims=3) == "ZYX"


def test_unreadable_files_give_clear_errors(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="could not be read"):
        read_image(tmp_path / "bad.tif")
    with pytest.raises(InputError, match="unsupported file type"):
        read_image(tmp_path / "x.png")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="RGB"):
        read_image(tmp_path / "rgb.tif")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError):
        read_image(tmp_path / "o.npy")  # never unpickled
    with pytest.raises(InputError, match="names 3 axes"):
        np.save(tmp_path / "two.npy", np.ones((4, 4)))
        read_image(tmp_path / "two.npy", "ZYX")


def test_glob_patterns_expand_and_must_match(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"im{i}.npy", np.ones((4, 4)))
    assert [p.name for p in expand_paths([str(tmp_path / "im*.npy")])] == ["im0.npy", "im1.npy", "im2.npy"]
    with pytest.raises(InputError, match="no file matches"):
        expand_paths([str(tmp_path / "none*.tif")])
    assert [p.name for p in expand_paths([str(tmp_path)])] == ["im0.npy", "im1.npy", "im2.npy"], "a folder's images"


def test_folders_and_patterns_leave_out_earlier_outputs(tmp_path):
    for name in ("a.tif", "b.npy", "a_cosdd_direct.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    skipped = []
    assert [p.name for p in expand_paths([str(tmp_path)], skipped)] == ["a.tif", "b.npy"]
    assert [p.name for p in skipped] == ["a_cosdd_direct.tif"]
    assert [p.name for p in expand_paths([str(tmp_path / "*.tif")])] == ["a.tif"]
    assert [p.name for p in expand_paths([str(tmp_path / "a_cosdd_direct.tif")])] == ["a_cosdd_direct.tif"], \
        "a file named outright is read"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no TIFF"):
        expand_paths([str(empty)])


def test_an_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", explode)
    with pytest.raises(OSError):
        write_tiff(tmp_path / "out.tif", np.ones((4, 4)), "YX")
    assert list(tmp_path.iterdir()) == []
