"""The AR noise model: causal along exactly one axis, a proper likelihood, linear-cost sampling."""

import math

import pytest
import torch

from napari_cosdd.engine.nets.ar_decoder import ARDecoder
from napari_cosdd.engine.config import ModelConfig


def _decoder(orientation, dims=2, channels=1, **kw):
    cfg = ModelConfig(in_channels=channels, spatial_dims=dims, orientation=orientation, levels=2, features=8,
                      latent_channels=4, downsampling=(0, 1), ar_filters=8, **kw)
    torch.manual_seed(0)
    return ARDecoder(cfg).double()


def _input_gradient(dec, shape, out_index, channel=0):
    """Which input pixels the mixture parameters at out_index depend on (non-zero gradient)."""
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    code = torch.randn((shape[0], 8) + shape[2:], dtype=torch.float64, requires_grad=True)
    params = dec(x, code)
    params[(0, channel, slice(None), slice(None)) + out_index].sum().backward()
    x_grad = torch.zeros_like(x) if x.grad is None else x.grad  # "none" never reads x at all
    return x_grad[0].abs() > 0, code.grad[0].abs().sum(0) > 0


@pytest.mark.parametrize("orientation,axis", [("x", 1), ("y", 0)])
def test_2d_output_depends_on_exactly_previous_pixels_of_its_line(orientation, axis):
    dec = _decoder(orientation)
    rf = dec.receptive_field
    size = rf + 20
    pos = [7, 7]
    pos[axis] = rf + 10
    seen, code_seen = _input_gradient(dec, (1, 1, size, size), tuple(pos))
    expected = torch.zeros(1, size, size, dtype=torch.bool)
    line = [slice(pos[0], pos[0] + 1), slice(pos[1], pos[1] + 1)]
    line[axis] = slice(pos[axis] - rf, pos[axis])
    expected[(0,) + tuple(line)] = True
    assert torch.equal(seen, expected), "must see the rf previous pixels of its own line only"
    # The code (the signal) may be seen at this pixel and earlier ones of the same line, nowhere else.
    allowed = torch.zeros(size, size, dtype=torch.bool)
    line[axis] = slice(pos[axis] - rf, pos[axis] + 1)
    allowed[tuple(line)] = True
    assert code_seen[tuple(pos)] and not (code_seen & ~allowed).any()


def test_receptive_field_is_41_by_default():
    assert _decoder("x").receptive_field == 41


def test_3d_z_orientation_runs_along_depth():
    dec = _decoder("z", dims=3)
    rf = dec.receptive_field
    d = rf + 6
    seen, _ = _input_gradient(dec, (1, 1, d, 5, 5), (rf + 3, 2, 2))
    expected = torch.zeros(1, d, 5, 5, dtype=torch.bool)
    expected[0, 3:rf + 3, 2, 2] = True
    assert torch.equal(seen, expected)


def test_3d_x_orientation_stays_in_its_row():
    dec = _decoder("x", dims=3)
    rf = dec.receptive_field
    w = rf + 6
    seen, _ = _input_gradient(dec, (1, 1, 3, 4, w), (1, 2, rf + 3))
    assert seen.sum() == rf and seen[0, 1, 2, 3:rf + 3].all()


def test_none_orientation_sees_no_pixel():
    dec = _decoder("none")
    seen, code_seen = _input_gradient(dec, (1, 1, 12, 12), (5, 5))
    assert not seen.any()
    assert code_seen.sum() == 1 and code_seen[5, 5]


def test_channels_are_independent_given_the_code():
    dec = _decoder("x", channels=2)
    rf = dec.receptive_field
    seen, _ = _input_gradient(dec, (1, 2, 4, rf + 8), (1, rf + 4), channel=1)
    assert not seen[0].any(), "channel 1's noise model must not see channel 0"
    assert seen[1].sum() == rf


def test_mixture_likelihood_integrates_to_one():
    dec = _decoder("x")
    params = torch.randn(1, 1, 3, 3, 2, 2, dtype=torch.float64)
    grid = torch.linspace(-40, 40, 400001, dtype=torch.float64)
    x = grid.view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    dens = dec.log_likelihood(x, params.expand(len(grid), -1, -1, -1, -1, -1)).exp()
    integral = torch.trapezoid(dens, grid, dim=0)
    assert torch.allclose(integral, torch.ones_like(integral), atol=1e-6)


def test_scale_floor_keeps_likelihood_finite():
    dec = _decoder("x")
    params = torch.zeros(1, 1, 3, 3, 4, 4, dtype=torch.float64)
    params[:, :, 2] = -1e4  # raw scales far below the floor
    ll = dec.log_likelihood(torch.zeros(1, 1, 4, 4, dtype=torch.float64), params)
    assert torch.isfinite(ll).all()
    peak = -math.log(dec.config.min_scale) - 0.5 * math.log(2 * math.pi)
    assert ll.max() <= peak + 1e-6, "no density above a Gaussian with the floor scale"


@pytest.mark.parametrize("orientation", ["x", "y", "none"])
def test_sliding_window_matches_full_pass(orientation):
    """What the sampler computes in a window of rf+1 pixels equals the full-line computation."""
    dec = _decoder(orientation)
    rf = dec.receptive_field
    length = rf + 25
    x = torch.randn(1, 1, 6, length, dtype=torch.float64)
    code = torch.randn(1, 8, 6, length, dtype=torch.float64)
    from napari_cosdd.engine.nets.ar_decoder import to_lines

    axis = dec.axis
    xl, _ = to_lines(x if orientation != "y" else x.transpose(-1, -2), axis)
    cl, _ = to_lines(code if orientation != "y" else code.transpose(-1, -2), axis)
    feats = dec._project(cl)
    full = dec._net(xl, feats)
    i = length - 3
    lo = max(0, i - rf)
    window = dec._net(xl[..., lo:i + 1], feats[..., lo:i + 1])[..., -1]
    assert torch.allclose(window, full[..., i], atol=1e-10)


@pytest.mark.parametrize("orientation,dims", [("x", 2), ("y", 2), ("none", 2), ("z", 3), ("x", 3)])
def test_sampling_works_for_every_orientation(orientation, dims):
    dec = _decoder(orientation, dims=dims).float()
    shape = (2, 8) + ((6, 10, 12) if dims == 3 else (10, 12))
    out = dec.sample(torch.randn(shape))
    assert out.shape == (2, 1) + shape[2:]
    assert torch.isfinite(out).all() and out.std() > 0, "no zeros: 'none' must sample too"


def test_sampling_cost_is_linear_in_line_length():
    """Each step runs the network on at most rf+1 pixels, whatever the line length."""
    dec = _decoder("x").float()
    widths = []
    original = dec._net

    def spy(x, feats):
        widths.append(feats.shape[-1])
        return original(x, feats)

    dec._net = spy
    dec.sample(torch.randn(1, 8, 2, 300))
    assert len(widths) == 300 and max(widths) == dec.receptive_field + 1
