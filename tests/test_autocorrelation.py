"""Noise autocorrelation and the orientation it suggests (napari_cosdd.engine.autocorrelation)."""

import numpy as np
import pytest

from napari_cosdd.engine.autocorrelation import noise_autocorrelation
from napari_cosdd.engine.data import InputError
from napari_cosdd.synthetic import add_noise, clean_image

SIZE = 256


@pytest.fixture(scope="module")
def clean():
    return clean_image((SIZE, SIZE), "mixed", seed=2)


def white_poisson_gaussian(clean, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.poisson(30 * clean) / 30 + 0.05 * rng.standard_normal(clean.shape)).astype(np.float32)


def test_stripes_along_rows_suggest_x(clean):
    result = noise_autocorrelation(add_noise(clean, "stripes", seed=1))
    assert result.orientation == "x"
    assert result.evidence["x"] > 3 * result.evidence["y"]
    assert "rows" in result.reason


def test_stripes_rotated_by_90_degrees_suggest_y(clean):
    rotated = np.rot90(add_noise(clean, "stripes", seed=1)).copy()
    assert noise_autocorrelation(rotated).orientation == "y"


def test_column_checkerboard_suggests_y(clean):
    result = noise_autocorrelation(add_noise(clean, "checkerboard", seed=1))
    assert result.orientation == "y"
    # The pattern flips sign every row: the column profile alternates.
    assert result.profiles["y"][1] < -0.3 and result.profiles["y"][2] > 0.2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_white_poisson_gaussian_noise_suggests_none(seed):
    image = white_poisson_gaussian(clean_image((SIZE, SIZE), "mixed", seed=seed), seed)
    result = noise_autocorrelation(image)
    assert result.orientation == "none", result.summary()


def test_camera_noise_suggests_x(clean):
    assert noise_autocorrelation(add_noise(clean, "camera", seed=1)).orientation == "x"


def test_bright_structured_image_with_row_noise_still_suggests_x():
    """No background anywhere: the chosen tiles hold signal, yet the row correlation decides."""
    bright = 0.5 + 0.5 * clean_image((SIZE, SIZE), "texture", seed=4)
    result = noise_autocorrelation(add_noise(bright, "stripes", seed=2))
    assert result.source == "low-signal tiles" and result.regions
    assert result.orientation == "x"


def test_low_signal_tiles_avoid_the_structure():
    """Half the image is bright structure, half flat background: the tiles come from the background."""
    image = clean_image((SIZE, SIZE), "mixed", seed=5)
    image[:, SIZE // 2:] = 0.06
    result = noise_autocorrelation(add_noise(image, "stripes", seed=3))
    assert all(box[1][0] >= SIZE // 2 for box in result.regions)


def test_map_shape_symmetry_and_unit_lag_zero(clean):
    result = noise_autocorrelation(add_noise(clean, "stripes", seed=1), max_lag=10)
    ac = result.autocorrelation
    assert ac.shape == (21, 21)
    assert ac[10, 10] == pytest.approx(1.0)
    np.testing.assert_allclose(ac, ac[::-1, ::-1], atol=1e-5)  # C(k) = C(-k)
    np.testing.assert_allclose(result.profiles["x"], ac[10, 10:])
    np.testing.assert_allclose(result.profiles["y"], ac[10:, 10])


def test_profile_matches_the_known_correlation_of_blurred_noise():
    """Noise blurred along X by a unit-L2 Gaussian of std s has correlation exp(-k^2 / (4 s^2)) at lag k."""
    rng = np.random.default_rng(0)
    blur = 3.0
    noise = add_noise(np.zeros((512, 512), np.float32) + 0.5, "stripes", peak=1e9, white_sigma=1e-6,
                      row_sigma=0.1, blur=blur, seed=5) - 0.5
    noise += 1e-3 * rng.standard_normal(noise.shape)
    result = noise_autocorrelation(noise, region=((0, 512), (0, 512)), max_lag=8)
    lags = np.arange(9)
    np.testing.assert_allclose(result.profiles["x"], np.exp(-lags**2 / (4 * blur**2)), atol=0.03)
    np.testing.assert_allclose(result.profiles["y"][1:], 0.0, atol=0.03)


def test_region_box_and_mask_use_only_those_pixels():
    """Left half striped along rows, right half the column checkerboard: each region tells its own.
    The background has a slow illumination gradient, which the per-region plane removes."""
    background = np.linspace(0.1, 0.4, SIZE, dtype=np.float32)[None, :] + np.zeros((SIZE, 1), np.float32)
    left = add_noise(background, "stripes", seed=1)
    right = add_noise(background, "checkerboard", seed=1)
    image = np.concatenate([left[:, : SIZE // 2], right[:, SIZE // 2:]], axis=1)
    box_left = noise_autocorrelation(image, region=((0, SIZE), (0, SIZE // 2)))
    box_right = noise_autocorrelation(image, region=(slice(0, SIZE), slice(SIZE // 2, SIZE)))
    assert (box_left.orientation, box_right.orientation) == ("x", "y")
    assert box_left.source == "region" and box_left.regions == [((0, SIZE), (0, SIZE // 2))]
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:, : SIZE // 2] = True
    np.testing.assert_allclose(noise_autocorrelation(image, region=mask).autocorrelation,
                               box_left.autocorrelation, atol=1e-4)


def test_irregular_mask_gives_the_same_profile_as_its_bounding_box_on_stationary_noise():
    noise = add_noise(np.full((256, 256), 0.5, np.float32), "stripes", seed=2)
    yy, xx = np.mgrid[:256, :256]
    disc = (yy - 128) ** 2 + (xx - 128) ** 2 < 100**2
    a = noise_autocorrelation(noise, region=disc, max_lag=6)
    b = noise_autocorrelation(noise, region=((28, 228), (28, 228)), max_lag=6)
    np.testing.assert_allclose(a.profiles["x"], b.profiles["x"], atol=0.05)
    assert a.n_pixels == int(disc.sum())


def test_residual_of_a_good_denoiser_is_the_noise(clean):
    noisy = add_noise(clean, "stripes", seed=1)
    result = noise_autocorrelation(noisy, denoised=clean)
    assert result.source == "residual" and result.n_pixels == SIZE * SIZE
    # The residual has no signal at all, so the column correlation vanishes.
    assert result.orientation == "x" and result.evidence["y"] < 0.02


def test_stack_pools_its_frames(clean):
    frames = np.stack([add_noise(clean, "stripes", seed=s) for s in range(3)])
    stack = noise_autocorrelation(frames, "TYX", denoised=np.broadcast_to(clean, frames.shape))
    singles = [noise_autocorrelation(f, denoised=clean).autocorrelation for f in frames]
    assert stack.autocorrelation.shape == singles[0].shape
    np.testing.assert_allclose(stack.autocorrelation, np.mean(singles, axis=0), atol=0.01)


def test_volume_with_noise_along_z_suggests_z():
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((40, 64, 64)).astype(np.float32)
    kernel = np.exp(-np.arange(-6, 7) ** 2 / (2 * 2.0**2))
    noise = np.apply_along_axis(lambda v: np.convolve(v, kernel, "same"), 0, noise)
    noise += 0.3 * rng.standard_normal(noise.shape)
    result = noise_autocorrelation(noise + 5.0, "ZYX", max_lag=8)
    assert result.autocorrelation.shape == (17, 17, 17)
    assert set(result.profiles) == {"x", "y", "z"}
    assert result.orientation == "z"


def test_small_image_shrinks_the_lag_and_says_so(clean):
    result = noise_autocorrelation(add_noise(clean[:12, :12], "stripes", seed=1), max_lag=25)
    assert result.max_lag == 10 and result.autocorrelation.shape == (21, 21)
    assert any("reduced" in n for n in result.notes)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(region=np.zeros((SIZE, SIZE), bool)), "no pixels"),
        (dict(region=np.ones((10, 10), bool)), "shape"),
        (dict(region=((0, 10),)), "one (start, stop) pair"),
        (dict(denoised=np.zeros((5, 5))), "denoised"),
        (dict(max_lag=0), "max_lag"),
    ],
)
def test_bad_arguments_give_clear_errors(clean, kwargs, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        noise_autocorrelation(clean + 0.01, **kwargs)


def test_bad_images_give_clear_errors(clean):
    with pytest.raises(InputError, match="pixel"):
        noise_autocorrelation(np.arange(4.0).reshape(2, 2))
    with pytest.raises(InputError, match="NaN"):
        noise_autocorrelation(np.where(clean > 0.5, np.nan, clean))
    with pytest.raises(InputError, match="axes"):
        noise_autocorrelation(clean, "ZYX")


def test_summary_names_the_suggestion_and_evidence(clean):
    text = noise_autocorrelation(add_noise(clean, "stripes", seed=1)).summary()
    assert "suggested orientation: x" in text and "evidence" in text and "profile along x" in text
