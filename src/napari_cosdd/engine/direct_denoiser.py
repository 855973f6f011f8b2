"""The Direct Denoiser: a U-Net that predicts the posterior mean (or median) in one pass."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import Downsample, GatedResidualBlock, Upsample, conv


class DirectDenoiser(nn.Module):
    """Deterministic U-Net with the VAE's level and downsampling layout and additive skips.

    It is trained on the noisy input against the signal decoder's output of the same step (gradients
    stopped): MSE makes it the posterior mean, L1 the pixel-wise posterior median.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, f = config.spatial_dims, config.features
        self.stem = conv(d, config.in_channels, f)
        self.down = nn.ModuleList(Downsample(d, f) if flag else nn.Identity() for flag in config.downsampling)
        # Levels still at full resolution get their block on the decoder side only: full-resolution
        # convolutions dominate the cost and the decoder block sees the skip anyway.
        full_res = [i < len(config.downsampling) - 1 and not any(config.downsampling[: i + 1])
                    for i in range(len(config.downsampling))]
        self.encoder = nn.ModuleList(nn.Identity() if fr else GatedResidualBlock(d, f, nn.SiLU) for fr in full_res)
        self.decoder = nn.ModuleList(GatedResidualBlock(d, f, nn.SiLU) for _ in config.downsampling[:-1])
        self.up = nn.ModuleList(Upsample(d, f) if flag else nn.Identity() for flag in config.downsampling)
        self.head = conv(d, f, config.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skips = []
        for down, block in zip(self.down, self.encoder):
            h = block(down(h))
            skips.append(h)
        for i in range(len(self.decoder) - 1, -1, -1):
            h = self.up[i + 1](h)
            h = self.decoder[i](h + skips[i])
        return self.head(self.up[0](h))
