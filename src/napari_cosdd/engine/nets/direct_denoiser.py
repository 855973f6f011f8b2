"""The Direct Denoiser: a U-Net that predicts the posterior mean (or median) in one pass.

It takes plain arguments (not a ModelConfig) and needs only torch and `blocks`, so that the
bioimage.io export can ship this file and blocks.py as the torch-only architecture of its weights.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import Encoder, Merge, ResidualBlock, Upsample, conv


class DirectDenoiser(nn.Module):
    """A deterministic twin of the ladder VAE: the same bottom-up path, and a top-down path whose levels
    merge the bottom-up value with the level above (and again around the skip) instead of sampling.

    It is trained on the noisy input against the signal decoder's output of the same step (gradients
    stopped): MSE makes it the posterior mean, L1 the pixel-wise posterior median.
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: int, downsampling, merge: str,
                 norm: str = "batch") -> None:
        super().__init__()
        d, f = spatial_dims, features
        downsampling = [int(v) for v in downsampling]
        self.encoder = Encoder(d, in_channels, f, downsampling, norm)
        below_top = downsampling[:-1]
        self.merge = nn.ModuleList(Merge(d, f, merge, norm) for _ in below_top)
        self.skip = nn.ModuleList(Merge(d, f, merge, norm) for _ in below_top)
        self.up = nn.ModuleList(Upsample(d, f) if flag else nn.Identity() for flag in downsampling)
        self.blocks = nn.ModuleList(ResidualBlock(d, f, norm=norm) for _ in downsampling)
        self.head = conv(d, f, in_channels, kernel=1)

    @staticmethod
    def arguments(config) -> dict:
        """The constructor's arguments for a ModelConfig (plain values: they also go into an export)."""
        return {"spatial_dims": config.spatial_dims, "in_channels": config.in_channels,
                "features": config.features, "downsampling": [int(v) for v in config.downsampling],
                "merge": config.merge, "norm": config.direct_norm}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self.encoder(x)
        top = len(values) - 1
        h = self.blocks[top](self.up[top](values[top]))
        for i in range(top - 1, -1, -1):
            m = self.merge[i](values[i], h)
            h = self.blocks[i](self.up[i](self.skip[i](m, h)))
        return self.head(h)
