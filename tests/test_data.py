"""Input handling: axes, checks with actionable messages, normalisation, split, crops."""

import numpy as np
import pytest

from napari_cosdd.engine import data as D
from napari_cosdd.engine.config import TrainConfig
from napari_cosdd.engine.train import Trainer


@pytest.mark.parametrize("axes,shape,n,c", [
    ("YX", (20, 30), 1, 1), ("TYX", (3, 20, 30), 3, 1), ("CYX", (2, 20, 30), 1, 2),
    ("YXC", (20, 30, 2), 1, 2), ("TZCYX", (2, 4, 3, 20, 30), 8, 3), ("SYX", (5, 20, 30), 5, 1),
])
def test_layout_round_trip(axes, shape, n, c):
    arr = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    layout = D.make_layout(arr, axes, 2)
    eng = layout.to_engine(arr)
    assert eng.shape == (n, c, 20, 30)
    assert np.array_equal(layout.from_engine(eng), arr)
    stacked = np.stack([eng, eng * 2])
    back = layout.from_engine(stacked, leading=(2,))
    assert back.shape == (2,) + shape and np.array_equal(back[1], arr * 2)


def test_3d_layout_keeps_z_spatial():
    arr = np.zeros((2, 6, 20, 30), dtype=np.uint16)
    layout = D.make_layout(arr, "TZYX", 3)
    assert layout.to_engine(arr).shape == (2, 1, 6, 20, 30)
    assert D.make_layout(arr, "TZYX", 2).to_engine(arr).shape == (12, 1, 20, 30)


@pytest.mark.parametrize("axes,match", [("YX", "name 2 axes but the image has 3"), ("TQX", "contain"),
                                        ("TYY", "twice"), ("TCY", "lack X")])
def test_axes_mismatch_messages(axes, match):
    with pytest.raises(D.InputError, match=match):
        D.make_layout(np.zeros((2, 3, 4)), axes, 2)


@pytest.mark.parametrize("array,match", [
    (np.full((32, 32), np.nan, dtype=np.float32), "NaN"),
    (np.ones((32, 32)), "constant"),
    (np.zeros((32, 32), dtype=bool), "boolean"),
    (np.zeros((32, 32), dtype=complex), "complex"),
])
def test_bad_values_are_rejected_with_advice(array, match):
    arr = array.copy()
    if match == "NaN":
        arr = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
        arr[3, 4] = np.nan
    with pytest.raises(D.InputError, match=match):
        Trainer(arr, "YX", preset="tiny", train_config=TrainConfig(max_steps=1))


def test_channel_counts_must_agree():
    rng = np.random.default_rng(0)
    with pytest.raises(D.InputError, match="channels"):
        Trainer([rng.normal(size=(2, 64, 64)), rng.normal(size=(3, 64, 64))], "CYX", preset="tiny",
                train_config=TrainConfig(max_steps=1))


def test_images_smaller_than_the_crop_shrink_it_and_say_so():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(48, 100)).astype(np.float32) for _ in range(10)]
    trainer = Trainer(images, "YX", preset="tiny", train_config=TrainConfig(max_steps=1, crop_size=64))
    assert trainer.crop[0] <= 48 and trainer.crop[1] <= 64
    assert any("crop shrunk" in m for m in trainer.messages)


def test_tiny_images_are_refused():
    with pytest.raises(D.InputError, match="too small"):
        Trainer(np.random.default_rng(0).normal(size=(5, 6)), "YX", preset="tiny",
                train_config=TrainConfig(max_steps=1))


def test_integer_input_is_accepted():
    arr = np.random.default_rng(0).poisson(20, size=(4, 64, 64)).astype(np.uint16)
    trainer = Trainer(arr, "SYX", preset="tiny", train_config=TrainConfig(max_steps=1, crop_size=32))
    assert trainer.train_images[0].dtype == np.float32


def _keys(images):
    return {img.tobytes() for img in images}


def test_split_by_images_is_seeded_and_disjoint():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(1, 32, 32)).astype(np.float32) for _ in range(20)]
    a = D.split_train_val(images, 0.1, (32, 32), seed=1)
    b = D.split_train_val(images, 0.1, (32, 32), seed=1)
    assert len(a.val) == 2 and len(a.train) == 18
    assert _keys(a.train).isdisjoint(_keys(a.val))
    assert _keys(a.train) | _keys(a.val) == _keys(images), "no image lost or duplicated"
    assert _keys(a.val) == _keys(b.val)


def test_split_by_bands_when_images_are_few():
    img = np.arange(200 * 120, dtype=np.float32).reshape(1, 200, 120)
    s = D.split_train_val([img], 0.1, (32, 32), seed=0)
    assert s.train[0].shape[1] + s.val[0].shape[1] == 200, "split along the longest axis"
    # Every pixel in exactly one set: the values are unique, so compare sets of values.
    tv, vv = set(s.train[0].ravel().tolist()), set(s.val[0].ravel().tolist())
    assert tv.isdisjoint(vv) and len(tv) + len(vv) == img.size
    assert s.val[0].shape[1] >= 32


def test_validation_crops_are_fixed():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(1, 64, 64)).astype(np.float32) for _ in range(3)]
    a = D.fixed_crops(images, (32, 32), 8, seed=0)
    b = D.fixed_crops(images, (32, 32), 8, seed=0)
    assert a.shape == (8, 1, 32, 32) and np.array_equal(a, b)


def test_crop_sampler_has_no_flips_and_covers_images():
    img = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64)
    sampler = D.CropSampler([img], (16, 16), seed=0)
    batch = sampler.batch(50)
    # Every crop is an un-flipped window: values increase by 1 along X and by 64 along Y.
    assert np.all(np.diff(batch, axis=-1) == 1) and np.all(np.diff(batch, axis=-2) == 64)


@pytest.mark.parametrize("orientation,dims,flips,swap", [
    ("x", 2, (0,), False), ("y", 2, (1,), False), ("none", 2, (0, 1), True),
    ("x", 3, (0, 1), False), ("y", 3, (0, 2), False), ("z", 3, (1, 2), False), ("none", 3, (0, 1, 2), True),
])
def test_noise_safe_flips_never_reverse_or_turn_a_noise_line(orientation, dims, flips, swap):
    assert D.noise_safe_flips(orientation, dims) == (flips, swap)


def _lines_along_x_intact(crop: np.ndarray) -> bool:
    """For a crop of the arange image: each row still runs left to right, one step at a time."""
    return bool(np.all(np.diff(crop, axis=-1) == 1))


def test_flipped_crops_keep_row_noise_lines_and_flip_across_them():
    img = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64)
    flips, swap = D.noise_safe_flips("x", 2)
    batch = D.CropSampler([img], (16, 16), seed=0, flip_axes=flips, swap=swap).batch(64)
    assert all(_lines_along_x_intact(c) for c in batch), "a row was reversed or turned into a column"
    down = [bool(np.all(np.diff(c, axis=-2) == 64)) for c in batch]
    assert 10 < sum(down) < 54, "rows come both in their order and upside down, about half each"


def test_pixel_independent_noise_gets_all_eight_flips_and_swaps():
    img = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64)
    flips, swap = D.noise_safe_flips("none", 2)
    batch = D.CropSampler([img], (16, 16), seed=0, flip_axes=flips, swap=swap).batch(400)
    # Which of the 8 symmetries made a crop shows in its two steps: along X and along Y.
    seen = {(float(c[0, 0, 1] - c[0, 0, 0]), float(c[0, 1, 0] - c[0, 0, 0])) for c in batch}
    assert seen == {(a, b) for a in (1, -1, 64, -64) for b in (1, -1, 64, -64) if abs(a) != abs(b)}


def test_a_trainer_flips_crops_only_when_asked():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 64, 64)).astype(np.float32)
    plain = Trainer(img, "SYX", preset="tiny", orientation="y", train_config=TrainConfig(max_steps=1))
    flipping = Trainer(img, "SYX", preset="tiny", orientation="y",
                       train_config=TrainConfig(max_steps=1, flip_crops=True))
    assert (plain.sampler.flip_axes, plain.sampler.swap) == ((), False)
    assert (flipping.sampler.flip_axes, flipping.sampler.swap) == ((1,), False)


def test_normalisation_is_per_channel():
    rng = np.random.default_rng(0)
    imgs = [np.stack([rng.normal(5, 2, (32, 32)), rng.normal(-1, 0.5, (32, 32))]).astype(np.float32)]
    mean, std = D.channel_stats(imgs)
    assert np.allclose(mean, [5, -1], atol=0.2) and np.allclose(std, [2, 0.5], atol=0.1)


def test_outliers_are_clipped_per_channel_and_the_images_keep_their_dtype():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, size=(2, 40, 40)).astype(np.float32)
    a[1] *= 100  # the second channel is 100x brighter: pooled limits would not touch it
    a[0, 0, 0], a[1, 0, 0] = 50.0, 5000.0  # one hot pixel per channel
    clipped, limits = D.clip_outliers([a, a.copy()], (0.5, 99.5))
    assert all(c.dtype == np.float32 for c in clipped)
    assert limits[0][1] < 5 and 100 < limits[1][1] < 500
    for ch, (lo, hi) in enumerate(limits):
        assert clipped[0][ch].min() >= lo and clipped[0][ch].max() <= hi
    assert a[0, 0, 0] == 50.0  # the caller's images are not changed
    with pytest.raises(D.InputError, match="percentiles"):
        D.clip_outliers([a], (99.0, 1.0))


# ------------------------------------------------------------------ the one axes guess


@pytest.mark.parametrize("ndim, dims, expected", [
    (2, 2, "YX"), (3, 2, "TYX"), (4, 2, "TZYX"), (5, 2, "STZYX"),
    (3, 3, "ZYX"), (4, 3, "TZYX"), (5, 3, "STZYX"),
])
def test_the_rule_puts_frames_before_the_image(ndim, dims, expected):
    from napari_cosdd.engine.data import guess_axes

    assert guess_axes(ndim, dims) == expected


def test_the_files_axes_come_first_then_the_layers_labels():
    from napari_cosdd.engine.data import guess_axes

    assert guess_axes(3, 2, file_axes="CYX", labels=("t", "y", "x")) == "CYX"
    assert guess_axes(3, 2, labels=("Z", "y", "x")) == "ZYX"
    assert guess_axes(3, 2, labels=("channel", "y", "x")) == "CYX"
    # napari's default labels (numbers) and labels that name no axis leave the rule in charge
    assert guess_axes(3, 2, labels=("0", "1", "2")) == "TYX"
    assert guess_axes(3, 2, labels=("t", "t", "x")) == "TYX"
    assert guess_axes(3, 2, file_axes="YX") == "TYX", "metadata for another number of axes is ignored"

