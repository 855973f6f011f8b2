"""The Direct Denoiser: a U-Net that predicts the posterior mean (or median) in one pass."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import Encoder, Merge, ResidualBlock, Upsample, conv


class DirectDenoiser(nn.Module):
    """A deterministic twin of the ladder VAE: the same bottom-up path, and a top-down path whose levels
    merge the bottom-up value with the level above (and again around the skip) instead of sampling.

    It is trained on the noisy input against the signal decoder's output of the same step (gradients
    stopped): MSE makes it the posterior mean, L1 the pixel-wise posterior median.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, f = config.spatial_dims, config.features
        self.encoder = Encoder(d, config.in_channels, f, config.downsampling)
        below_top = config.downsampling[:-1]
        self.merge = nn.ModuleList(Merge(d, f, config.merge) for _ in below_top)
        self.skip = nn.ModuleList(Merge(d, f, config.merge) for _ in below_top)
        self.up = nn.ModuleList(Upsample(d, f) if flag else nn.Identity() for flag in config.downsampling)
        self.blocks = nn.ModuleList(ResidualBlock(d, f) for _ in config.downsampling)
        self.head = conv(d, f, config.in_channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self.encoder(x)
        top = len(values) - 1
        h = self.blocks[top](self.up[top](values[top]))
        for i in range(top - 1, -1, -1):
            m = self.merge[i](values[i], h)
            h = self.blocks[i](self.up[i](self.skip[i](m, h)))
        return self.head(h)
