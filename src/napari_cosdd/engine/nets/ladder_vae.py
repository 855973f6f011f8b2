"""The hierarchical (ladder) VAE: encodes a noisy image into latents and maps them to a signal code."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .blocks import Encoder, Merge, ResidualBlock, Upsample, conv

_MIN_STD = 1e-4


def _std(raw: torch.Tensor) -> torch.Tensor:
    return F.softplus(raw) + _MIN_STD


def gaussian_kl(mu_q: torch.Tensor, std_q: torch.Tensor, mu_p: torch.Tensor, std_p: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(q || p) between diagonal Gaussians."""
    log_ratio = torch.log(std_q) - torch.log(std_p)
    return 0.5 * ((std_q * std_q + (mu_q - mu_p) ** 2) / (std_p * std_p) - 1.0) - log_ratio


def _draw(mu: torch.Tensor, std: torch.Tensor, sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """A reparameterised draw (or the mean); ``generator`` keeps a caller's random stream its own."""
    if not sample:
        return mu
    return mu + std * torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)


class TopDownLevel(nn.Module):
    """One level of the top-down pass.

    Prior p(z | above) from the top-down value; posterior q(z | above, x) from the merge of the bottom-up
    and top-down values; the sample is mapped back to features, merged with the top-down value (the
    stochastic skip) and passed through a residual block, upsampled first where the level's bottom-up
    side halved the resolution. The top level has a stationary learnable prior and takes q from the
    bottom-up value alone.
    """

    def __init__(self, config: ModelConfig, upsample: bool, top: bool) -> None:
        super().__init__()
        d, f, z, k = config.spatial_dims, config.features, config.latent_channels, config.latent_kernel
        self.top = top
        self.latents = z
        self.posterior = conv(d, f, 2 * z, kernel=k)
        if top:
            self.prior_mean = nn.Parameter(torch.zeros(z))
            self.prior_raw_std = nn.Parameter(torch.full((z,), math.log(math.e - 1)))  # softplus -> 1
        else:
            self.prior = conv(d, f, 2 * z, kernel=k)
            self.merge = Merge(d, f, config.merge)
            self.skip = Merge(d, f, config.merge)
        self.from_latent = conv(d, z, f, kernel=k)
        self.up = Upsample(d, f) if upsample else nn.Identity()
        self.block = ResidualBlock(d, f)

    def _prior(self, td: torch.Tensor | None, like_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.top:
            view = (1, -1) + (1,) * (len(like_shape) - 2)
            mean = self.prior_mean.view(view).expand(like_shape)
            return mean, _std(self.prior_raw_std).view(view).expand(like_shape)
        mu, raw = self.prior(td).chunk(2, dim=1)
        return mu, _std(raw)

    def forward(self, td: torch.Tensor | None, bu: torch.Tensor | None, sample: bool = True,
                top_shape: tuple[int, ...] | None = None, generator: torch.Generator | None = None):
        """Returns (features for the level below, element-wise KL or None when drawing from the prior)."""
        if bu is not None:
            q_in = bu if self.top else self.merge(bu, td)
            mu_q, raw_q = self.posterior(q_in).chunk(2, dim=1)
            std_q = _std(raw_q)
            mu_p, std_p = self._prior(td, tuple(mu_q.shape))
            kl = gaussian_kl(mu_q, std_q, mu_p, std_p)
            z = _draw(mu_q, std_q, sample, generator)
        else:  # generating from the prior
            shape = top_shape if self.top else (td.shape[0], self.latents) + tuple(td.shape[2:])
            mu_p, std_p = self._prior(td, shape)
            kl = None
            z = _draw(mu_p, std_p, True, generator)
        h = self.from_latent(z)
        if not self.top:
            h = self.skip(h, td)
        return self.block(self.up(h)), kl


class LadderVAE(nn.Module):
    """Bottom-up pass stores every level; top-down pass samples z level by level.

    The top prior is stationary (one mean and std per latent channel), so the model does not depend
    on the training crop size and can sample from the prior at any size.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.checkpointing = False
        d, f = config.spatial_dims, config.features
        self.encoder = Encoder(d, config.in_channels, f, config.downsampling)
        self.levels = nn.ModuleList(
            TopDownLevel(config, upsample=bool(flag), top=(i == config.levels - 1))
            for i, flag in enumerate(config.downsampling))
        self.out = conv(d, f, f, kernel=1)

    def _run(self, module: nn.Module, *args):
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The deterministic pass: one stored value per level (shared by all posterior samples)."""
        return self.encoder(x, self._run)

    def top_down(self, skips: list[torch.Tensor], sample: bool = True,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample z level by level given the bottom-up values (from ``generator`` when given).

        Returns the code and the KL per image and level in nats, (B, levels), level 0 (finest) first.
        """
        td = None
        kls = []
        for i in range(self.config.levels - 1, -1, -1):
            td, kl = self._run(self.levels[i], td, skips[i], sample, None, generator)
            kls.append(kl.flatten(1).sum(1))
        return self.out(td), torch.stack(kls[::-1], dim=1)

    def forward(self, x: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, *spatial), normalised. Returns (code (B, F, *spatial), KL (B, levels) in nats)."""
        return self.top_down(self.bottom_up(x), sample, generator)

    @torch.no_grad()
    def sample_prior(self, n: int, spatial_shape: tuple[int, ...], device=None) -> torch.Tensor:
        """Codes of n images drawn from the prior at any size (multiple of the size multiple)."""
        m = self.config.size_multiple
        if any(s % m for s in spatial_shape):
            raise ValueError(f"prior samples need sizes that are multiples of {m}, got {spatial_shape}")
        top_shape = (n, self.config.latent_channels) + tuple(s // m for s in spatial_shape)
        td = None
        for i in range(self.config.levels - 1, -1, -1):
            td, _ = self.levels[i](td, None, True, top_shape)
        return self.out(td)
