"""Building blocks shared by the networks: N-d convolutions, the gated residual block, merges, resampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv(dims: int, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1,
         padding_mode: str = "zeros") -> nn.Module:
    """A 2-D or 3-D convolution with 'same' padding for odd kernels."""
    cls = nn.Conv2d if dims == 2 else nn.Conv3d
    return cls(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, padding_mode=padding_mode)


class PixelNorm(nn.Module):
    """Normalise the channels at each pixel on their own (a layer norm over the channel axis), then a learned
    scale and shift per channel.

    Unlike BatchNorm it keeps no statistics across the batch or the image: a pixel's output is the same in
    training and in evaluation, whatever the batch, and whatever the tile it is computed in (GroupNorm would
    normalise over the whole tile, so tiled inference would change the result from tile to tile).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


def norm_layer(dims: int, channels: int, kind: str = "batch") -> nn.Module:
    """The normalisation of a residual block: "batch" (BatchNorm), "pixel" (PixelNorm) or "none"."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm3d(channels)
    if kind == "pixel":
        return PixelNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}: use batch, pixel or none")


class ResidualBlock(nn.Module):
    """Norm -> Mish -> conv3, twice, optionally gated by a 1x1 tanh(a) * sigmoid(b), added to the input."""

    def __init__(self, dims: int, channels: int, gated: bool = True, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            norm_layer(dims, channels, norm), nn.Mish(), conv(dims, channels, channels),
            norm_layer(dims, channels, norm), nn.Mish(), conv(dims, channels, channels),
        )
        self.gate = conv(dims, channels, 2 * channels, kernel=1) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if self.gate is not None:
            a, b = self.gate(h).chunk(2, dim=1)
            h = torch.tanh(a) * torch.sigmoid(b)
        return x + h


class Merge(nn.Module):
    """Combine two feature maps of the same shape.

    "block": a 1x1 convolution of both, then a gated residual block (what the method's ladder VAE does
    where the bottom-up and top-down paths meet, and around the stochastic skip); "add": their sum, a
    speed shortcut kept only as an option (it let the latents collapse on real data, docs/benchmarks.md).
    """

    def __init__(self, dims: int, channels: int, mode: str = "block", norm: str = "batch") -> None:
        super().__init__()
        self.mode = mode  # checked by ModelConfig (config.MERGES)
        if mode == "block":
            self.mix = conv(dims, 2 * channels, channels, kernel=1)
            self.block = ResidualBlock(dims, channels, norm=norm)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.mode == "add":
            return a + b
        return self.block(self.mix(torch.cat([a, b], dim=1)))


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 convolution."""

    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        self.conv = conv(dims, channels, channels, kernel=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: linear interpolation, then a 1x1 convolution."""

    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        self.mode = "bilinear" if dims == 2 else "trilinear"
        self.conv = conv(dims, channels, channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=False))


class Stem(nn.Module):
    """The first layers on the image: a 5x5 convolution, Mish and an ungated residual block."""

    def __init__(self, dims: int, c_in: int, features: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv = conv(dims, c_in, features, kernel=5, padding_mode="replicate")
        self.act = nn.Mish()
        self.block = ResidualBlock(dims, features, gated=False, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.act(self.conv(x)))


class Encoder(nn.Module):
    """The bottom-up path shared in shape by the VAE and the Direct Denoiser: one value per level."""

    def __init__(self, dims: int, c_in: int, features: int, downsampling: tuple[int, ...],
                 norm: str = "batch") -> None:
        super().__init__()
        self.stem = Stem(dims, c_in, features, norm)
        self.down = nn.ModuleList(Downsample(dims, features) if f else nn.Identity() for f in downsampling)
        self.blocks = nn.ModuleList(ResidualBlock(dims, features, norm=norm) for _ in downsampling)

    def forward(self, x: torch.Tensor, run=None) -> list[torch.Tensor]:
        run = run or (lambda module, *args: module(*args))
        h = self.stem(x)
        values = []
        for down, block in zip(self.down, self.blocks):
            h = run(block, down(h))
            values.append(h)
        return values
