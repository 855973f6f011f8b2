"""The output check: does a denoised output improve on its input? Judged without the clean image."""

import numpy as np
import pytest

from napari_cosdd.engine import inference as I
from napari_cosdd.engine.output_check import check_output


def smooth_field(n, size, width, seed):
    """Frames of a smooth random signal (Gaussian-filtered white noise, unit variance)."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    kernel = np.exp(-2 * (np.pi * width) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, size, size))) * kernel).real
    return field / field.std()


def row_noise(shape, sigma, seed):
    """Noise correlated along rows (x) and independent between rows."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(shape)
    k = np.ones(5) / np.sqrt(5)
    return sigma * np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), -1, white)


def mse(a, b):
    return float(np.mean((a - b) ** 2))


@pytest.fixture(scope="module")
def scene():
    clean = smooth_field(6, 96, width=3.0, seed=0)[:, None]  # (N, C, Y, X)
    noise = row_noise(clean.shape, 0.4, seed=1)
    return clean, clean + noise, noise


def test_noise_variance_is_estimated_without_the_clean_image(scene):
    clean, noisy, noise = scene
    check = check_output(noisy, clean, "YX", "x")
    assert check.axes == "Y", "the covariances are taken across rows, where the noise is not correlated"
    assert check.noise_variance == pytest.approx(np.var(noise), rel=0.15)


def test_a_flat_output_is_called_worse_when_it_is(scene):
    clean, noisy, _ = scene
    flat = np.broadcast_to(noisy.mean(axis=(2, 3), keepdims=True), noisy.shape)
    assert mse(flat, clean) > mse(noisy, clean), "the scene makes a flat output worse than the input"
    check = check_output(noisy, flat, "YX", "x")
    assert check.verdict == "worse" and "WORSE" in check.message
    assert check.structure_lost == pytest.approx(1.0, abs=0.01)
    true_gain = 10 * np.log10(mse(noisy, clean) / mse(flat, clean))
    assert check.gain_at_most_db == pytest.approx(true_gain, abs=1.5), "the floor is tight for smooth errors"


def test_a_shifted_output_is_caught_by_its_mean(scene):
    clean, noisy, noise = scene
    shifted = clean + 2 * noise.std()
    assert check_output(noisy, shifted, "YX", "x").verdict == "worse"


def test_a_good_output_passes_and_the_bound_holds(scene):
    clean, noisy, _ = scene
    rng = np.random.default_rng(3)
    good = clean + 0.05 * rng.standard_normal(clean.shape)  # error far below the noise
    check = check_output(noisy, good, "YX", "x")
    assert check.verdict == "ok" and check.structure_lost < 0.1
    true_gain = 10 * np.log10(mse(noisy, clean) / mse(good, clean))
    assert check.gain_at_most_db >= true_gain - 1.0, "an upper bound on the gain, up to the estimate's spread"


def test_the_worst_channel_decides(scene):
    clean, noisy, _ = scene
    flat = np.broadcast_to(noisy.mean(axis=(2, 3), keepdims=True), noisy.shape)
    two_noisy = np.concatenate([noisy, noisy], axis=1)
    check = check_output(two_noisy, np.concatenate([clean, flat], axis=1), "YX", "x")
    assert check.verdict == "worse" and "channel 1" in check.message


def test_wrong_orientation_uses_the_other_axis(scene):
    """With noise along x but orientation 'y', the check looks across x, where the noise is correlated:
    it then counts part of the noise as signal and reads a smaller noise variance."""
    clean, noisy, noise = scene
    right = check_output(noisy, clean, "YX", "x")
    wrong = check_output(noisy, clean, "YX", "y")
    assert wrong.axes == "X" and wrong.noise_variance < 0.8 * right.noise_variance


def test_denoise_reports_the_check(tiny_model, stripes_small):
    noisy = stripes_small[0][:2]
    out = I.denoise(tiny_model, noisy, "SYX", method="direct", device="cpu")
    assert out.check is not None and out.check.verdict in ("ok", "doubtful", "worse")
    assert out.check.axes == "Y", "the tiny model's noise runs along x"
    assert out.info["check"]["verdict"] == out.check.verdict
    sampled = I.denoise(tiny_model, noisy, "SYX", method="sample", n_samples=2, device="cpu", seed=0)
    assert sampled.check is not None, "the mean of the samples is checked as well"


def test_shape_mismatch_is_refused(scene):
    clean, noisy, _ = scene
    with pytest.raises(ValueError, match="differ in shape"):
        check_output(noisy, clean[:, :, :50], "YX", "x")


def test_one_wrong_frame_in_a_good_stack_is_named():
    """A dark frame given a false offset (seen on a held-out image: one frame worse than its input while
    the stack as a whole gained) is caught by judging each frame on its own, and the message names it."""
    clean = smooth_field(6, 128, width=3.0, seed=5)[:, None]
    noisy = clean + row_noise(clean.shape, 0.4, seed=6)
    output = clean.copy()
    output[2] += 0.5
    assert mse(output[2], clean[2]) > mse(noisy[2], clean[2]), "frame 2 is worse than its input"
    assert mse(output, clean) < 0.5 * mse(noisy, clean), "the stack as a whole gained"
    check = check_output(noisy, output, "YX", "x")
    assert check.verdict == "worse" and "(frame 2)" in check.message
    picked = check_output(noisy, output, "YX", "x", frame_numbers=[0, 40, 80, 120, 160, 200])
    assert "(frame 80)" in picked.message, "frames picked from a long stack are named as the user numbers them"
    fine = check_output(noisy, clean + 0.0, "YX", "x")
    assert fine.verdict == "ok" and "frame" not in fine.message, "good frames raise nothing"
