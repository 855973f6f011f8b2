"""Property tests of the seeded synthetic images and noises (napari_cosdd.synthetic)."""

import numpy as np
import pytest

from napari_cosdd.synthetic import (
    NOISE_KINDS,
    add_camera_noise,
    add_checkerboard_noise,
    add_noise,
    add_stripes_noise,
    clean_image,
    make_dataset,
    psnr,
)

IMAGE_KINDS = ("blobs", "filaments", "texture", "mixed")
SHAPES = ((96, 128), (12, 40, 48))
N_BINS = 8
# Bias tolerance of a bin mean, in standard errors sd_bin * sqrt(CORRELATED_PIXELS / n_bin).
# CORRELATED_PIXELS bounds how many pixels of correlated noise count as one independent sample
# (stripes: the row noise spans 2*sqrt(pi)*blur ~ 11 px but is ~half the variance; camera: the
# ~64 pixels a bin has in each row share that row's offset, ~8 % of the variance).
CORRELATED_PIXELS = 16
N_STANDARD_ERRORS = 4


@pytest.fixture(scope="module")
def large_clean():
    return clean_image((512, 512), "mixed", seed=7)


@pytest.fixture(scope="module")
def residuals(large_clean):
    """Residual ``noisy - clean`` (float64) of each noise kind with default parameters."""
    return {kind: add_noise(large_clean, kind, seed=1).astype(np.float64) - large_clean for kind in NOISE_KINDS}


def lag1_autocorr(residual, axis):
    """Normalised autocorrelation of ``residual`` at lag 1 along ``axis``."""
    r = residual - residual.mean()
    n = r.shape[axis]
    head = np.take(r, np.arange(n - 1), axis=axis)
    tail = np.take(r, np.arange(1, n), axis=axis)
    return float(np.mean(head * tail) / np.mean(r * r))


def intensity_bins(clean, n_bins=N_BINS):
    """Index (0 .. n_bins-1) of each pixel's clean-intensity quantile bin."""
    edges = np.quantile(clean, np.linspace(0, 1, n_bins + 1))
    return np.clip(np.searchsorted(edges, clean, side="right") - 1, 0, n_bins - 1)


# ---------------------------------------------------------------- clean images


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_clean_image_range_dtype_shape(kind, shape):
    image = clean_image(shape, kind, seed=3)
    assert image.dtype == np.float32
    assert image.shape == shape
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.std() > 0.02  # not constant
    assert np.mean(image < 0.2) > 0.05  # dark pixels exist
    assert np.mean(image > 0.8) > 0.0005  # bright pixels exist


@pytest.mark.parametrize("shape", SHAPES)
def test_mixed_image_has_dim_nonzero_background(shape):
    image = clean_image(shape, "mixed", seed=4)
    assert 0.05 <= image.min() <= 0.1
    assert image.max() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_clean_image_deterministic_given_seed(kind):
    first = clean_image((64, 80), kind, seed=11)
    np.testing.assert_array_equal(first, clean_image((64, 80), kind, seed=11))
    assert not np.array_equal(first, clean_image((64, 80), kind, seed=12))


def test_clean_image_rejects_bad_kind_and_shape():
    with pytest.raises(ValueError, match="mixed"):
        clean_image((32, 32), "stars")
    with pytest.raises(ValueError):
        clean_image((32,))


# ---------------------------------------------------------------- zero mean given the signal


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_is_zero_mean_within_intensity_bins(kind, large_clean, residuals):
    residual = residuals[kind]
    bins = intensity_bins(large_clean)
    for b in range(N_BINS):
        in_bin = residual[bins == b]
        standard_error = in_bin.std() * np.sqrt(CORRELATED_PIXELS / in_bin.size)
        # tolerance ~0.01-0.02 here; measured |bin means| <= 0.005
        assert abs(in_bin.mean()) < N_STANDARD_ERRORS * standard_error, (kind, b)


@pytest.mark.parametrize("level", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_camera_rounding_does_not_bias(level):
    # Without offsets, drift and read noise nothing dithers the ADU rounding: the worst case.
    # Standard error of the mean <= sqrt(2 * 1.0 / 20) / 512 ~ 0.0006, so 0.01 is ~16 of them.
    flat = np.full((512, 512), level, dtype=np.float32)
    noisy = add_camera_noise(flat, row_offset_sigma=0.0, drift_sigma=0.0, read_sigma=0.0, seed=5)
    assert abs(float(noisy.mean()) - level) < 0.01


def test_camera_output_is_quantised():
    noisy = add_camera_noise(clean_image((64, 64), seed=1), seed=2)
    adu = noisy.astype(np.float64) * 20.0 * 50.0 * 0.05  # photons * em_gain * adu_per_electron
    np.testing.assert_allclose(adu, np.round(adu), atol=1e-3)


# ---------------------------------------------------------------- signal dependence


@pytest.mark.parametrize("kind, bright_noisier", [("stripes", True), ("camera", True), ("checkerboard", False)])
def test_noise_variance_depends_on_signal(kind, bright_noisier, large_clean, residuals):
    residual = residuals[kind]
    dark = residual[large_clean < np.quantile(large_clean, 0.2)].var()
    bright = residual[large_clean > np.quantile(large_clean, 0.8)].var()
    # measured (dark, bright): stripes (0.016, 0.028), camera (0.016, 0.051), checkerboard (0.031, 0.028)
    assert (bright > 1.05 * dark) if bright_noisier else (dark > 1.05 * bright)


# ---------------------------------------------------------------- correlation orientation


def test_stripes_correlated_along_x_only(residuals):
    along_x, along_y = lag1_autocorr(residuals["stripes"], 1), lag1_autocorr(residuals["stripes"], 0)
    assert along_x > 0.2  # measured 0.48
    assert abs(along_y) < 0.05


def test_checkerboard_anticorrelated_along_y_only(residuals):
    along_x = lag1_autocorr(residuals["checkerboard"], 1)
    along_y = lag1_autocorr(residuals["checkerboard"], 0)
    assert along_y < -0.3  # measured -0.76
    assert abs(along_x) < 0.05


def test_camera_correlated_along_x():
    # On a dim background (clean = 0.1) row offsets + drift make ~1/3 of the variance.
    # (On the whole mixed image the white EM-amplified shot noise of bright pixels dilutes
    # the lag-1 correlation along X to ~0.17, see the next test.)
    residual = add_camera_noise(np.full((256, 256), 0.1, dtype=np.float32), seed=3) - 0.1
    along_x, along_y = lag1_autocorr(residual, 1), lag1_autocorr(residual, 0)
    assert along_x > 0.2  # expected (0.0025 + 0.95 * 0.0025) / 0.016 ~ 0.3
    assert along_x > along_y + 0.15


def test_camera_correlated_along_x_on_mixed_image(residuals):
    assert lag1_autocorr(residuals["camera"], 1) > lag1_autocorr(residuals["camera"], 0) + 0.1


def test_autocorr_helper_swaps_axes_under_rotation(residuals):
    rotated = np.rot90(residuals["stripes"])
    assert lag1_autocorr(rotated, 0) == pytest.approx(lag1_autocorr(residuals["stripes"], 1))
    assert lag1_autocorr(rotated, 1) == pytest.approx(lag1_autocorr(residuals["stripes"], 0))
    assert lag1_autocorr(rotated, 0) > 0.2 and abs(lag1_autocorr(rotated, 1)) < 0.05


def test_3d_noises_keep_orientation_per_plane():
    volume = clean_image((6, 96, 96), seed=2)
    stripes = add_stripes_noise(volume, seed=1) - volume
    checker = add_checkerboard_noise(volume, seed=1) - volume
    assert lag1_autocorr(stripes, 2) > 0.2 and abs(lag1_autocorr(stripes, 1)) < 0.05
    assert lag1_autocorr(checker, 1) < -0.3 and abs(lag1_autocorr(checker, 2)) < 0.05
    assert abs(lag1_autocorr(stripes, 0)) < 0.05  # planes are independent


# ---------------------------------------------------------------- determinism, dtype, dispatch


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_deterministic_given_seed(kind, shape):
    clean = clean_image(shape, seed=0)
    first = add_noise(clean, kind, seed=9)
    assert first.dtype == np.float32 and first.shape == shape
    np.testing.assert_array_equal(first, add_noise(clean, kind, seed=9))
    assert not np.array_equal(first, add_noise(clean, kind, seed=10))


def test_add_noise_passes_parameters():
    clean = clean_image((64, 64), seed=0)
    np.testing.assert_array_equal(
        add_noise(clean, "stripes", seed=4, peak=5.0, blur=1.0),
        add_stripes_noise(clean, peak=5.0, blur=1.0, seed=4),
    )


def test_add_noise_unknown_kind_names_valid_kinds():
    with pytest.raises(ValueError) as error:
        add_noise(np.zeros((8, 8)), "salt")
    assert all(kind in str(error.value) for kind in NOISE_KINDS)


# ---------------------------------------------------------------- datasets and PSNR


@pytest.mark.parametrize("noise", NOISE_KINDS)
def test_make_dataset_shapes_and_dtypes(noise):
    noisy, clean = make_dataset(noise, n_images=3, shape=(48, 64), seed=1)
    assert noisy.shape == clean.shape == (3, 48, 64)
    assert noisy.dtype == clean.dtype == np.float32
    assert not np.array_equal(clean[0], clean[1])
    assert not np.array_equal(noisy[0] - clean[0], noisy[1] - clean[1])
    again_noisy, again_clean = make_dataset(noise, n_images=3, shape=(48, 64), seed=1)
    np.testing.assert_array_equal(noisy, again_noisy)
    np.testing.assert_array_equal(clean, again_clean)


def test_make_dataset_3d_and_noise_params():
    noisy, clean = make_dataset("checkerboard", n_images=2, shape=(4, 32, 32), seed=0, amplitude=0.0)
    assert noisy.shape == clean.shape == (2, 4, 32, 32)
    with pytest.raises(ValueError, match="stripes"):
        make_dataset("salt", n_images=1, shape=(8, 8))


def test_psnr_of_identical_images_is_inf():
    image = clean_image((32, 32), seed=0)
    assert psnr(image, image.copy()) == float("inf")


def test_psnr_decreases_with_more_noise():
    clean = clean_image((128, 128), seed=0)
    levels = [(300.0, 0.01, 0.02), (30.0, 0.05, 0.10), (5.0, 0.15, 0.30)]
    values = [psnr(clean, add_stripes_noise(clean, p, w, r, seed=1)) for p, w, r in levels]
    assert values[0] > values[1] > values[2]


def test_default_stripes_dataset_psnr():
    noisy, clean = make_dataset()  # stripes: peak 30, white 0.05, row 0.10, blur 3; 16 x 256x256 mixed
    mean_psnr = np.mean([psnr(c, n) for c, n in zip(clean, noisy)])
    assert 14.0 < mean_psnr < 24.0  # measured 16.35 dB


def test_excess_row_autocorrelation_tells_stripes_from_blur():
    from napari_cosdd.synthetic import excess_row_autocorrelation

    clean = np.zeros((256, 256), dtype=np.float32) + 0.5
    stripes = add_stripes_noise(clean, seed=0) - clean
    assert np.all(excess_row_autocorrelation(stripes) > 0.2)
    rng = np.random.default_rng(0)
    blur = np.fft.irfft2(np.fft.rfft2(rng.normal(size=(256, 256))) * np.exp(
        -0.5 * (np.fft.fftfreq(256)[:, None] ** 2 + np.fft.rfftfreq(256)[None] ** 2) * 40 ** 2))
    assert np.all(np.abs(excess_row_autocorrelation(blur)) < 0.05), "isotropic errors score ~0"
