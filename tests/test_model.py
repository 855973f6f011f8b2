"""The ladder VAE and the whole model: KL, shapes in 2-D/3-D/multi-channel, a size-free prior."""

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from napari_cosdd.engine.config import PRESETS, ModelConfig, default_downsampling, model_config_from_preset
from napari_cosdd.engine.nets.ladder_vae import gaussian_kl
from napari_cosdd.engine.nets.model import COSDD


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mq, mp = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    sq, sp = torch.rand(1000, generator=g) + 0.1, torch.rand(1000, generator=g) + 0.1
    ours = gaussian_kl(mq, sq, mp, sp)
    ref = kl_divergence(Normal(mq, sq), Normal(mp, sp))
    assert torch.allclose(ours, ref, atol=1e-5)


def _tiny(**kw):
    return model_config_from_preset("tiny", 32, **kw)


@pytest.mark.parametrize("dims,channels,orientation", [(2, 1, "x"), (2, 3, "y"), (3, 1, "z"), (3, 2, "x"),
                                                       (2, 1, "none")])
def test_losses_and_outputs_have_the_right_shapes(dims, channels, orientation):
    model = COSDD(_tiny(spatial_dims=dims, in_channels=channels, orientation=orientation))
    shape = (2, channels) + ((16, 16, 16) if dims == 3 else (32, 32))
    x = torch.randn(shape)
    losses = model.losses(x)
    kl_levels = losses.pop("kl_levels")
    assert set(losses) == {"elbo", "kl", "nll", "signal", "direct"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert losses["kl"] >= 0
    assert kl_levels.shape == (model.config.levels,) and torch.all(kl_levels >= 0)
    assert float(kl_levels.sum()) == pytest.approx(float(losses["kl"].detach()), rel=1e-5)
    model.eval()
    with torch.no_grad():
        assert model.direct(x).shape == shape
        assert model.posterior_sample(x).shape == shape


def test_each_loss_updates_only_its_own_networks():
    model = COSDD(_tiny())
    losses = model.losses(torch.randn(2, 1, 32, 32))
    groups = model.parameter_groups()
    for loss_name, own in (("signal", "signal"), ("direct", "direct")):
        model.zero_grad()
        losses[loss_name].backward(retain_graph=True)
        for name, params in groups.items():
            touched = any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
            assert touched == (name == own), f"{loss_name} loss must update only {own}"


def test_prior_is_stationary_and_samples_at_any_size():
    model = COSDD(_tiny()).eval()
    m = model.config.size_multiple
    for size in [(m, m), (5 * m, 3 * m), (125 * m // 8 * 8, 88 * 8)]:
        code = model.vae.sample_prior(1, size)
        assert code.shape[-2:] == size
        assert torch.isfinite(code).all()
    # The top prior has no spatial extent at all.
    assert model.vae.levels[-1].prior_mean.shape == (model.config.latent_channels,)


def test_model_trained_on_small_crops_runs_on_a_large_odd_sized_image(tiny_model):
    from napari_cosdd.engine.inference import denoise

    image = np.random.default_rng(0).normal(size=(700, 1000)).astype(np.float32)
    out = denoise(tiny_model, image, "YX", method="direct", device="cpu")
    assert out.direct.shape == (700, 1000) and np.isfinite(out.direct).all()


def test_default_downsampling_follows_the_crop():
    # 64-px crops allow 5 halvings: with 6 levels the lowest keeps full resolution.
    assert default_downsampling(6, 64) == (0, 1, 1, 1, 1, 1)
    assert sum(default_downsampling(14, 256)) == 7
    assert default_downsampling(3, 64) == (1, 1, 1)


def test_presets_and_overrides():
    assert set(PRESETS) >= {"tiny", "small", "large"}
    small = model_config_from_preset("small", 64)
    assert (small.levels, small.features) == (6, 64)
    large = model_config_from_preset("large", 256, mixture_components=5)
    assert (large.levels, large.features, large.mixture_components) == (14, 128, 5)
    with pytest.raises(ValueError, match="unknown preset"):
        model_config_from_preset("huge")


def test_config_round_trip_rebuilds_the_same_model():
    cfg = _tiny(orientation="y")
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    a, b = COSDD(cfg), COSDD(again)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]


@pytest.mark.parametrize("norm,independent", [("pixel", True), ("none", True), ("batch", False)])
def test_direct_denoiser_norm_decides_whether_a_tile_depends_on_its_batch(norm, independent):
    """With pixel (or no) normalisation, the Direct Denoiser's output for one crop is the same alone or in a
    batch, in training and in evaluation mode: what it learns on batches of crops is what it does on one
    tile. BatchNorm fails both (here after one training-mode pass has moved its running statistics)."""
    from napari_cosdd.engine.nets.direct_denoiser import DirectDenoiser

    torch.manual_seed(0)
    net = DirectDenoiser(2, 1, 8, [1, 0, 1], "block", norm)
    x = torch.randn(4, 1, 32, 32)
    x[0] = x[0] * 0.1 - 2  # a flat dark crop among busier ones
    net.train()
    with torch.no_grad():
        in_batch = net(x)[:1]
        alone_train = net(x[:1])
        net.eval()
        alone_eval = net(x[:1])
    same = torch.allclose(in_batch, alone_train, atol=1e-5) and torch.allclose(in_batch, alone_eval, atol=1e-5)
    assert same == independent


@pytest.mark.parametrize("bad,match", [
    (dict(orientation="diagonal"), "orientation"),
    (dict(orientation="z", spatial_dims=2), "3-D"),
    (dict(direct_loss="huber"), "direct_loss"),
    (dict(direct_norm="group"), "direct_norm"),
    (dict(levels=3, downsampling=(1, 1)), "entries"),
])
def test_invalid_configs_say_why(bad, match):
    base = dict(levels=3, downsampling=(1, 1, 1))
    base.update(bad)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**base)
