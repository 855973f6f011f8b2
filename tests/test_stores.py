"""Large inputs read frame by frame and outputs written frame by frame (engine.stores): the files hold
what the in-memory path returns, in the input's axes, and a stopped run leaves no file behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

from napari_cosdd.engine import inference as I
from napari_cosdd.engine.data import InputError, make_layout
from napari_cosdd.engine.io import ImageFile, read_image
from napari_cosdd.engine.stores import TiffOutputs, ZarrOutputs, ngff_multiscales, store_for


@pytest.mark.parametrize("axes,shape,dims", [("TCYX", (3, 2, 8, 9), 2), ("YXC", (8, 9, 2), 2),
                                             ("ZTYX", (2, 3, 8, 9), 2), ("CZYX", (2, 5, 8, 9), 3)])
def test_frames_read_and_written_one_at_a_time_match_the_whole_array(axes, shape, dims):
    a = np.random.default_rng(0).random(shape, dtype=np.float32)
    layout = make_layout(a, axes, dims)
    engine = layout.to_engine(a)
    back = np.zeros_like(a)
    for i in range(layout.n_frames):
        frame = layout.read_frame(a, i)
        np.testing.assert_array_equal(frame, engine[i])
        layout.write_frame(back, i, frame)
    np.testing.assert_array_equal(back, a)
    region = tuple(slice(1, 5) for _ in range(dims))
    np.testing.assert_array_equal(layout.read_frame(a, 0, region), engine[0][(slice(None),) + region])


def _stack(stripes_small, n=4):
    noisy, _ = stripes_small
    return np.ascontiguousarray(noisy[:n])


def test_direct_to_ome_zarr_equals_memory_and_reads_back_lazily(tiny_model, stripes_small, tmp_path):
    x = _stack(stripes_small)
    memory = I.denoise(tiny_model, x, "TYX", method="direct", device="cpu", tile=64, overlap=16)
    store = ZarrOutputs(tmp_path, "movie", scale={"Y": 0.5, "X": 0.5}, units={"Y": "um", "X": "um"})
    disk = I.denoise(tiny_model, zarr.array(x), "TYX", method="direct", device="cpu", tile=64, overlap=16,
                     out=store)
    path = tmp_path / "movie_cosdd_direct.ome.zarr"
    assert disk.info["paths"] == {"direct": str(path)}
    assert isinstance(disk.direct, zarr.Array)  # lazy: read from the store, not held
    np.testing.assert_allclose(disk.direct[:], memory.direct, rtol=1e-6, atol=1e-6)
    assert disk.check.verdict == memory.check.verdict
    attrs = json.loads((path / ".zattrs").read_text())
    axes = attrs["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["t", "y", "x"] and axes[1]["unit"] == "um"
    assert attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]
    f = read_image(path)  # our reader: lazy, with the axes from the NGFF metadata
    assert f.axes == "TYX" and not isinstance(f.data, np.ndarray)
    np.testing.assert_allclose(np.asarray(f.data[2]), memory.direct[2], rtol=1e-6, atol=1e-6)
    assert not list(tmp_path.glob("*.part"))


def test_samples_variance_and_median_stream_to_zarr_as_in_memory(tiny_model, stripes_small, tmp_path):
    x = _stack(stripes_small, 2)
    kw = dict(method="sample", n_samples=5, variance=True, median=True, keep_samples=True, device="cpu",
              tile=64, overlap=16, seed=7)
    memory = I.denoise(tiny_model, x, "TYX", **kw)
    disk = I.denoise(tiny_model, x, "TYX", out=ZarrOutputs(tmp_path, "m"), **kw)
    for name in ("mean", "variance", "std", "median", "samples"):
        np.testing.assert_allclose(np.asarray(getattr(disk, name)[:]), getattr(memory, name), rtol=1e-5,
                                   atol=1e-5, err_msg=name)
    assert disk.samples.shape == (5,) + x.shape
    # the mean of the kept samples is the mean output (both blended the same tiles)
    np.testing.assert_allclose(np.asarray(disk.samples[:]).mean(0), memory.mean, rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"m_cosdd_{n}.ome.zarr" for n in ("mean", "variance", "std", "median", "samples"))


def test_tiff_stream_keeps_imagej_calibration_and_axes(tiny_model, stripes_small, tmp_path):
    noisy = _stack(stripes_small, 3)
    x = np.stack([noisy, noisy[::-1]], axis=1)  # T C Y X
    like = ImageFile(tmp_path / "in.tif", x, "TCYX", "metadata", {"spacing": 2.0, "unit": "um"}, (4.0, 4.0))
    memory = I.denoise(tiny_model_2c := _two_channel(tiny_model), x, "TCYX", method="direct", device="cpu")
    disk = I.denoise(tiny_model_2c, x, "TCYX", method="direct", device="cpu", out=TiffOutputs(tmp_path, "in", like))
    path = tmp_path / "in_cosdd_direct.tif"
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "TCYX"
        assert tif.imagej_metadata["unit"] == "um" and tif.imagej_metadata["spacing"] == 2.0
        np.testing.assert_allclose(tif.asarray(), memory.direct, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(disk.direct), memory.direct, rtol=1e-6, atol=1e-6)


def _two_channel(model):
    """The tiny model's copy taking two channels (the same weights can't, so a fresh 2-channel model)."""
    import copy

    from napari_cosdd.engine.nets.model import COSDD

    cfg = copy.deepcopy(model.config)
    cfg.in_channels = 2
    twin = COSDD(cfg)
    twin.eval()
    return twin


def test_a_stopped_run_leaves_no_file(tiny_model, stripes_small, tmp_path):
    x = _stack(stripes_small)
    for store in (ZarrOutputs(tmp_path, "a"), TiffOutputs(tmp_path, "b")):
        gen = I.denoise_iter(tiny_model, x, "TYX", method="direct", device="cpu", tile=64, overlap=16, out=store)
        for _ in range(3):
            next(gen)
        gen.close()  # what Cancel does
    assert list(tmp_path.iterdir()) == []


def test_a_bad_frame_in_a_large_input_is_named(tiny_model, stripes_small, tmp_path):
    x = _stack(stripes_small).astype(np.float32)
    x[2, 5, 5] = np.nan
    lazy = zarr.array(x)
    with pytest.raises(InputError, match="frame 2 has 1 NaN"):
        I.denoise(tiny_model, lazy, "TYX", method="direct", device="cpu", out=ZarrOutputs(tmp_path, "bad"))
    assert list(tmp_path.iterdir()) == []


def test_ngff_metadata_only_where_the_axes_allow_it():
    assert [a["name"] for a in ngff_multiscales("TCZYX")[0]["axes"]] == ["t", "c", "z", "y", "x"]
    assert ngff_multiscales("QZYX")[0]["axes"][0] == {"name": "sample"}  # samples of a 3-D image
    assert ngff_multiscales("QTYX") is None  # NGFF 0.4 puts time first
    assert ngff_multiscales("YXC") is None  # channels last: not NGFF 0.4; our own attribute says the axes
    assert ngff_multiscales("SCYX") is None  # a sequence beside channels: two custom axes
    with pytest.raises(InputError, match="unknown output format"):
        store_for("png", ".", "x")


def test_training_reads_a_bounded_sample_of_a_large_input(stripes_small):
    """An input over max_train_gb is never read whole: an evenly spread sample of frames is, and said."""
    from napari_cosdd.engine.config import TrainConfig
    from napari_cosdd.engine.train import Trainer

    noisy, _ = stripes_small  # 8 frames of 96 x 96
    reads = []

    class Counting:
        """A lazy array that records the frames read (as a zarr or dask array would read them)."""

        shape, dtype, ndim = noisy.shape, noisy.dtype, noisy.ndim

        def __getitem__(self, index):
            reads.append(index[0])
            return noisy[index]

    frame_gb = 4 * 96 * 96 / 1e9
    cfg = TrainConfig(max_steps=1, crop_size=32, seed=0, device="cpu", max_train_gb=4.5 * frame_gb)
    trainer = Trainer(Counting(), "TYX", preset="tiny", orientation="x", train_config=cfg)
    assert sorted(reads) == [0, 2, 5, 7]  # 4 frames of 8, evenly spread, each read once
    assert any("training reads 4 of its 8 frames" in m for m in trainer.messages)
    whole = Trainer(noisy, "TYX", preset="tiny", orientation="x",
                    train_config=TrainConfig(max_steps=1, crop_size=32, seed=0, device="cpu"))
    assert not any("training reads" in m for m in whole.messages)


def test_autocorrelation_of_a_lazy_stack_reads_a_sample_of_frames(tmp_path):
    from napari_cosdd.engine import autocorrelation as A
    from napari_cosdd.synthetic import make_dataset

    noisy, _ = make_dataset("stripes", n_images=40, shape=(64, 64), seed=1)
    np.save(tmp_path / "big.npy", noisy)
    lazy = read_image(tmp_path / "big.npy", lazy=True).data
    assert isinstance(lazy, np.memmap)
    result = A.noise_autocorrelation(lazy, "TYX")
    assert result.orientation == "x"
    assert any(f"on {A.MAX_LAZY_FRAMES} of the 40 frames" in n for n in result.notes)


def test_outputs_beyond_imagej_size_are_bigtiff_with_their_axes(tiny_model, stripes_small, tmp_path, monkeypatch):
    monkeypatch.setattr(TiffOutputs, "IMAGEJ_LIMIT", 0)  # as if the output were over 4 GB
    x = _stack(stripes_small, 3)
    res = I.denoise(tiny_model, x, "TYX", method="direct", device="cpu", out=TiffOutputs(tmp_path, "big"))
    with tifffile.TiffFile(tmp_path / "big_cosdd_direct.tif") as tif:
        assert tif.is_bigtiff and not tif.is_imagej
        assert tif.series[0].axes == "TYX" and tif.series[0].shape == x.shape
        np.testing.assert_array_equal(tif.asarray(), np.asarray(res.direct))
