"""The hierarchical (ladder) VAE: encodes a noisy image into latents and maps them to a signal code."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .layers import Downsample, GatedResidualBlock, Upsample, conv

_MIN_STD = 1e-4


def _std(raw: torch.Tensor) -> torch.Tensor:
    return F.softplus(raw) + _MIN_STD


def gaussian_kl(mu_q: torch.Tensor, std_q: torch.Tensor, mu_p: torch.Tensor, std_p: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(q || p) between diagonal Gaussians."""
    log_ratio = torch.log(std_q) - torch.log(std_p)
    return 0.5 * ((std_q * std_q + (mu_q - mu_p) ** 2) / (std_p * std_p) - 1.0) - log_ratio


class TopDownLevel(nn.Module):
    """One level below the top: prior from the top-down value, posterior from bottom-up + top-down."""

    def __init__(self, dims: int, features: int, latents: int) -> None:
        super().__init__()
        # One 1x1 convolution of the top-down value gives the prior's parameters and its share of
        # merge(bottom-up, top-down); the bottom-up share is added (no concatenated copy).
        self.from_td = conv(dims, features, 2 * latents + features, kernel=1)
        self.merge_bu = conv(dims, features, features, kernel=1)
        self.latents = latents
        self.posterior = nn.Sequential(nn.Mish(), conv(dims, features, 2 * latents, kernel=1))
        # Stochastic skip: the sample is projected and added to the top-down value.
        self.skip = conv(dims, latents, features, kernel=1)
        self.block = GatedResidualBlock(dims, features)

    def forward(self, td: torch.Tensor, bu: torch.Tensor | None, sample: bool = True):
        prior, merge_td = self.from_td(td).split([2 * self.latents, td.shape[1]], dim=1)
        mu_p, raw_p = prior.chunk(2, dim=1)
        std_p = _std(raw_p)
        if bu is None:  # generating from the prior
            mu_q, std_q = mu_p, std_p
            kl = None
        else:
            mu_q, raw_q = self.posterior(self.merge_bu(bu) + merge_td).chunk(2, dim=1)
            std_q = _std(raw_q)
            kl = gaussian_kl(mu_q, std_q, mu_p, std_p)
        z = mu_q + std_q * torch.randn_like(std_q) if sample else mu_q
        td = td + self.skip(z)
        return self.block(td), kl


class LadderVAE(nn.Module):
    """Bottom-up pass stores every level; top-down pass samples z level by level.

    The top prior is stationary (one mean and std per latent channel), so the model does not depend
    on the training crop size and can sample from the prior at any size.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, f, z = config.spatial_dims, config.features, config.latent_channels
        self.config = config
        self.checkpointing = False
        self.stem = conv(d, config.in_channels, f, kernel=3)
        self.down = nn.ModuleList(Downsample(d, f) if flag else nn.Identity() for flag in config.downsampling)
        self.bottom_up_blocks = nn.ModuleList(GatedResidualBlock(d, f) for _ in range(config.levels))
        # Top level: posterior from the bottom-up value alone, stationary learnable prior.
        self.top_posterior = conv(d, f, 2 * z, kernel=1)
        self.top_prior_mean = nn.Parameter(torch.zeros(z))
        self.top_prior_raw_std = nn.Parameter(torch.full((z,), math.log(math.e - 1)))  # softplus -> 1
        self.top_project = conv(d, z, f, kernel=1)
        self.top_block = GatedResidualBlock(d, f)
        self.levels_td = nn.ModuleList(TopDownLevel(d, f, z) for _ in range(config.levels - 1))
        self.up = nn.ModuleList(Upsample(d, f) if flag else nn.Identity() for flag in config.downsampling)
        self.out = conv(d, f, f, kernel=1)

    def _run(self, module: nn.Module, *args):
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _top_prior(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = (1, -1) + (1,) * self.config.spatial_dims
        mean = self.top_prior_mean.view(view).expand_as(like)
        std = _std(self.top_prior_raw_std).view(view).expand_as(like)
        return mean, std

    def bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The deterministic pass: one stored value per level (shared by all posterior samples)."""
        h = self.stem(x)
        skips = []
        for down, block in zip(self.down, self.bottom_up_blocks):
            h = self._run(block, down(h))
            skips.append(h)
        return skips

    def top_down(self, skips: list[torch.Tensor], sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample z level by level given the bottom-up values; returns (code, KL per image in nats)."""
        mu_q, raw_q = self.top_posterior(skips[-1]).chunk(2, dim=1)
        std_q = _std(raw_q)
        mu_p, std_p = self._top_prior(mu_q)
        kl = gaussian_kl(mu_q, std_q, mu_p, std_p).flatten(1).sum(1)
        z = mu_q + std_q * torch.randn_like(std_q) if sample else mu_q
        td = self._run(self.top_block, self.top_project(z))
        for i in range(self.config.levels - 2, -1, -1):
            td = self.up[i + 1](td)
            td, kl_i = self._run(self.levels_td[i], td, skips[i], sample)
            kl = kl + kl_i.flatten(1).sum(1)
        td = self.up[0](td)
        return self.out(td), kl

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, *spatial), normalised. Returns (code (B, F, *spatial), KL per image in nats)."""
        return self.top_down(self.bottom_up(x), sample)

    @torch.no_grad()
    def sample_prior(self, n: int, spatial_shape: tuple[int, ...], device=None) -> torch.Tensor:
        """Codes of n images drawn from the prior at any size (multiple of the size multiple)."""
        m = self.config.size_multiple
        if any(s % m for s in spatial_shape):
            raise ValueError(f"prior samples need sizes that are multiples of {m}, got {spatial_shape}")
        top_shape = (n, self.config.latent_channels) + tuple(s // m for s in spatial_shape)
        mu_p, std_p = self._top_prior(torch.empty(top_shape, device=device))
        z = mu_p + std_p * torch.randn(top_shape, device=device)
        td = self.top_block(self.top_project(z))
        for i in range(self.config.levels - 2, -1, -1):
            td = self.up[i + 1](td)
            td, _ = self.levels_td[i](td, None)
        return self.out(self.up[0](td))
