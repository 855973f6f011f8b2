"""Denoising: direct and sampled outputs, statistics, tiling with blending, stacks, noise generation."""

import copy

import numpy as np
import pytest
import torch

from napari_cosdd.engine import inference as I
from napari_cosdd.engine.data import InputError


def test_direct_output_keeps_axes_and_dtype(tiny_model, stripes_small):
    noisy = stripes_small[0][:2]
    out = I.denoise(tiny_model, noisy, "SYX", method="direct", device="cpu")
    assert out.direct.shape == noisy.shape and out.direct.dtype == np.float32
    assert out.mean is None and out.samples is None


def test_sampled_statistics(tiny_model, stripes_small):
    img = stripes_small[0][0]
    out = I.denoise(tiny_model, img, "YX", method="sample", n_samples=6, median=True, keep_samples=True,
                    device="cpu", seed=0)
    assert out.samples.shape == (6,) + img.shape
    assert np.allclose(out.mean, out.samples.mean(0), atol=1e-4)
    assert np.allclose(out.variance, out.samples.var(0, ddof=1), rtol=1e-3, atol=1e-6)
    assert np.allclose(out.std, np.sqrt(out.variance))
    assert np.allclose(out.median, np.median(out.samples, 0), atol=1e-4)
    assert (out.variance > 0).all(), "posterior samples differ"


def test_sample_statistics_do_not_keep_samples_unless_asked(tiny_model, stripes_small, monkeypatch):
    """Mean and variance accumulate per batch: nothing of size n_samples is allocated."""
    img = stripes_small[0][0]
    allocated = []
    real_zeros = np.zeros

    def spy(shape, *a, **k):
        allocated.append(tuple(np.atleast_1d(shape)))
        return real_zeros(shape, *a, **k)

    monkeypatch.setattr(I.np, "zeros", spy)
    I.denoise(tiny_model, img, "YX", method="sample", n_samples=40, device="cpu")
    assert all(40 not in s for s in allocated)


def test_tiled_and_untiled_direct_outputs_agree_without_seams(tiny_model):
    """Tolerance: 2% of the input's range at any pixel, 0.5% on average, and no step at tile borders.

    Tiles see less context near their edges, so tiled and whole-image outputs cannot be bit-equal;
    BatchNorm is in eval mode, so the networks are otherwise position-independent. The blending ramps
    hide any remaining difference: the mean absolute jump between neighbouring columns at a tile border
    is no larger than elsewhere (within 1.5x).
    """
    from napari_cosdd.synthetic import add_stripes_noise, clean_image

    img = add_stripes_noise(clean_image((200, 300), seed=4), seed=5)
    whole = I.denoise(tiny_model, img, "YX", device="cpu", tile=512).direct
    res = I.denoise(tiny_model, img, "YX", device="cpu", tile=96, overlap=32)
    tiled, side = res.direct, res.info["tile"][1]
    span = img.max() - img.min()
    assert np.abs(tiled - whole).max() < 0.02 * span
    assert np.abs(tiled - whole).mean() < 0.005 * span
    jumps = np.abs(np.diff(tiled, axis=1)).mean(0)
    starts = I.tile_starts(300, side, 32)
    assert len(starts) > 1
    borders = [s - 1 for s in starts[1:]] + [s + side - 1 for s in starts[:-1]]
    assert jumps[borders].mean() < 1.5 * np.median(jumps)


def test_tile_layout_covers_every_pixel_with_positive_weight():
    weight = np.zeros((130, 70))
    for slices, w in I._tiles((130, 70), (64, 32), (16, 8)):
        weight[slices] += w
    assert weight.min() > 0.05


@pytest.mark.parametrize("multiple", [1, 8, 16])
def test_balanced_tiles_keep_the_count_and_overlap_and_compute_less(multiple):
    for length in range(40, 1300, 7):
        for tile, overlap in ((256, 32), (96, 16), (64, 8)):
            if length <= tile:
                assert I.balanced_tile(length, tile, overlap, multiple) == length
                continue
            side = I.balanced_tile(length, tile, overlap, multiple)
            assert side <= tile and (side % multiple == 0 or side == tile)
            old, new = I.tile_starts(length, tile, overlap), I.tile_starts(length, side, overlap)
            assert len(new) == len(old), (length, tile, side)
            assert new[0] == 0 and new[-1] + side == length
            assert all(b - a <= side - overlap for a, b in zip(new, new[1:])), "overlap kept"
            assert len(new) * side <= len(old) * tile
    # the case that motivated it: 512 px frames in 256 px tiles overlapping by 32
    assert I.balanced_tile(512, 256, 32, 16) == 192


def test_samples_share_one_bottom_up_pass_per_tile(tiny_model, stripes_small, monkeypatch):
    """Sampling encodes each tile once and draws every sample from it: the same samples, seed for seed,
    as drawing each from the image afresh, for a fraction of the work."""
    img = stripes_small[0][0]
    calls = []
    encoder = tiny_model.vae.encoder
    real = type(encoder).forward
    monkeypatch.setattr(type(encoder), "forward", lambda self, *a: calls.append(1) or real(self, *a))
    out = I.denoise(tiny_model, img, "YX", method="sample", n_samples=5, keep_samples=True, device="cpu",
                    seed=7, tile=512)
    assert len(calls) == 1 and out.info["tiles"] == 1
    model = copy.deepcopy(tiny_model).eval()
    g = torch.Generator().manual_seed(7)
    x = (torch.from_numpy(img)[None, None].float() - model.data_mean) / model.data_std
    with torch.no_grad():
        fresh = [model.posterior_sample(x, 1, g)[0, 0] * model.data_std + model.data_mean for _ in range(5)]
    assert np.allclose(out.samples, torch.stack(fresh).numpy(), atol=1e-4)


def test_2d_model_runs_a_stack_plane_by_plane(tiny_model, stripes_small):
    stack = stripes_small[0][:3]
    events = list(I.denoise_iter(tiny_model, stack, "TYX", device="cpu"))
    assert events[-1].done == events[-1].total == 3
    single = I.denoise(tiny_model, stack[1], "YX", device="cpu").direct
    whole = I.denoise(tiny_model, stack, "TYX", device="cpu").direct
    assert np.allclose(whole[1], single, atol=1e-5)


def test_channel_mismatch_is_refused(tiny_model):
    with pytest.raises(InputError, match="channel"):
        I.denoise(tiny_model, np.random.default_rng(0).normal(size=(2, 64, 64)), "CYX", device="cpu")


def test_cancel_by_closing_the_generator(tiny_model, stripes_small):
    gen = I.denoise_iter(tiny_model, stripes_small[0], "SYX", device="cpu")
    next(gen), next(gen)
    gen.close()
    assert next(tiny_model.parameters()).device.type == "cpu"


def test_auto_tile_bounds_memory():
    from napari_cosdd.engine.config import model_config_from_preset
    from napari_cosdd.engine.nets.model import COSDD

    model = COSDD(model_config_from_preset("small", 64))
    side = I.auto_tile(model, torch.device("cpu"))
    assert side % model.config.size_multiple == 0
    assert side * side * I.bytes_per_pixel(model) <= 2 * 2**30


@pytest.mark.parametrize("orientation", ["x", "y", "none"])
def test_generated_noise_image(orientation, stripes_small):
    from napari_cosdd.engine.config import model_config_from_preset
    from napari_cosdd.engine.nets.model import COSDD

    model = COSDD(model_config_from_preset("tiny", 32, orientation=orientation)).eval()
    real, generated = I.generate_noisy(model, stripes_small[0][0], "YX", device="cpu", seed=0)
    assert real.shape == generated.shape == (1, 96, 96)
    assert np.isfinite(generated).all() and generated.std() > 0


def _twin(model):
    import copy

    return copy.deepcopy(model)


def test_inference_leaves_the_callers_model_exactly_as_it_was(tiny_model, stripes_small):
    """Denoising a model that is training (train mode) must not flip it to eval mode, move it, or
    change a weight: training and denoising can share one model."""
    from napari_cosdd.engine.noise_check import check_noise

    model = _twin(tiny_model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    img = stripes_small[0][0]
    I.denoise(model, img, "YX", method="direct", device="cpu")
    I.denoise(model, img, "YX", method="sample", n_samples=2, device="cpu", seed=3)
    I.generate_noisy(model, img, "YX", device="cpu", max_side=32, seed=0)
    check_noise(model, img, "YX", device="cpu", max_side=32)
    assert model.training, "still in train mode"
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_seed_is_the_calls_own_stream(tiny_model, stripes_small):
    """A seeded call repeats itself and does not reseed or advance the global generator, which other
    threads (training) draw from."""
    img = stripes_small[0][0]
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    a = I.denoise(tiny_model, img, "YX", method="sample", n_samples=2, variance=False, device="cpu", seed=11).mean
    assert torch.equal(torch.rand(4), expected), "the global stream is where it was"
    b = I.denoise(tiny_model, img, "YX", method="sample", n_samples=2, variance=False, device="cpu", seed=11).mean
    c = I.denoise(tiny_model, img, "YX", method="sample", n_samples=2, variance=False, device="cpu", seed=12).mean
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
