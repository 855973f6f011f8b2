"""The autoregressive noise model: causal 1-D convolutions along one axis, a Gaussian mixture per pixel.

Because it sees only the previous pixels of its own line (row, column or depth line), it can model
noise that is correlated along that line and depends on the signal code, but not 2-D structure, so
the signal is left to the latents.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..progress import run_to_end

_LOG_2PI = math.log(2 * math.pi)


def _orientation_axis(orientation: str, spatial_dims: int) -> int:
    """Index (counting from the first spatial axis) of the axis the decoder runs along."""
    if orientation == "x" or orientation == "none":
        return spatial_dims - 1
    if orientation == "y":
        return spatial_dims - 2
    return 0  # "z"


def to_lines(t: torch.Tensor, axis: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, C, *spatial) -> (B, C, lines, length) with the noise axis last; also the permuted shape."""
    t = t.movedim(2 + axis, -1)
    shape = t.shape
    return t.reshape(shape[0], shape[1], -1, shape[-1]), tuple(shape)


def from_lines(t: torch.Tensor, permuted_shape: tuple[int, ...], axis: int) -> torch.Tensor:
    """Inverse of to_lines for a tensor with any channel count."""
    t = t.reshape(t.shape[0], t.shape[1], *permuted_shape[2:])
    return t.movedim(-1, 2 + axis)


class CausalConv(nn.Module):
    """Convolution along the last axis that sees pixel i and the ones before it (or only the ones
    before it when `strict`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1, groups: int = 1,
                 strict: bool = False) -> None:
        super().__init__()
        self.strict = strict
        self.pad = (kernel - 1) * dilation + (1 if strict else 0)
        self.conv = nn.Conv2d(c_in, c_out, (1, kernel), dilation=(1, dilation), groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        y = self.conv(F.pad(x, (self.pad, 0)))
        return y[..., :length] if self.strict else y


class ARDecoder(nn.Module):
    """p(x | code): autoregressive along the orientation axis, a mixture of Gaussians per pixel.

    Channels are modelled independently (grouped convolutions) but share the code.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, w, k = config.in_channels, config.ar_filters, config.ar_kernel
        self.config = config
        self.channels = c
        self.components = config.mixture_components
        self.axis = _orientation_axis(config.orientation, config.spatial_dims)
        self.sees_neighbours = config.orientation != "none"
        kernel = k if self.sees_neighbours else 1
        width = c * w
        self.width = width
        blocks = len(config.ar_dilations)
        # The code enters every block through a 1x1 convolution (same pixel only); one convolution makes
        # all the blocks' shares at once.
        self.code_proj = nn.Conv2d(config.features, blocks * width, 1)
        # Each block: a causal convolution along the line plus the code, ReLU, a 1x1 convolution, added to
        # the block's input. The first block sees only earlier pixels (strict) and starts the stream.
        self.causal = nn.ModuleList(
            CausalConv(c if i == 0 else width, width, kernel, dilation=d, groups=c, strict=(i == 0))
            for i, d in enumerate(config.ar_dilations))
        self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1, groups=c) for _ in config.ar_dilations)
        self.out = nn.Conv2d(width, c * 3 * self.components, 1, groups=c)

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    def _project(self, code_lines: torch.Tensor) -> torch.Tensor:
        # Channels-last makes the (1, k) convolutions about 1.7x faster on CPU; converting the code
        # before the projection keeps every later activation in that layout.
        return self.code_proj(code_lines.contiguous(memory_format=torch.channels_last))

    def _net(self, x_lines: torch.Tensor | None, code_feats: torch.Tensor) -> torch.Tensor:
        inject = code_feats.chunk(len(self.causal), dim=1)
        if self.sees_neighbours:
            h = x_lines.contiguous(memory_format=torch.channels_last)
        else:  # orientation "none": the noise depends on the code alone, never on other pixels
            h = torch.zeros_like(inject[0][:, : self.channels])
        for i, (causal, pointwise) in enumerate(zip(self.causal, self.pointwise)):
            u = pointwise(F.relu(causal(h) + inject[i]))
            h = u if i == 0 else h + u
        return self.out(h).contiguous()

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Mixture parameters (B, C, 3, K, *spatial) for every pixel of x given the code."""
        x_lines, shape = to_lines(x, self.axis)
        code_lines, _ = to_lines(code, self.axis)
        params = self._net(x_lines, self._project(code_lines))
        params = from_lines(params, shape, self.axis)
        return params.unflatten(1, (self.channels, 3, self.components))

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-weights, means, scales), each (B, C, K, *spatial); scales have a floor."""
        logits, means, raw_scales = params.unbind(2)
        scales = F.softplus(raw_scales) + self.config.min_scale
        return F.log_softmax(logits, dim=2), means, scales

    def log_likelihood(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x | code) per pixel and channel, shape (B, C, *spatial)."""
        log_w, means, scales = self.split(params)
        z = (x.unsqueeze(2) - means) / scales
        log_comp = -0.5 * z * z - torch.log(scales) - 0.5 * _LOG_2PI
        return torch.logsumexp(log_w + log_comp, dim=2)

    def sample_from_params(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        log_w, means, scales = self.split(params)
        uniform = torch.rand(log_w.shape, generator=generator, device=log_w.device, dtype=log_w.dtype)
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)).clamp_min(1e-20))
        pick = (log_w + gumbel).argmax(dim=2, keepdim=True)
        mu = means.gather(2, pick).squeeze(2)
        sd = scales.gather(2, pick).squeeze(2)
        return mu + sd * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)

    @torch.no_grad()
    def sample_iter(self, code: torch.Tensor, generator: torch.Generator | None = None):
        """Draw a noisy image (normalised units) given the code, as a generator: it yields (done, total)
        positions along the lines and returns the image, so a caller can show progress and stop.

        Pixels along a line are drawn one after another through a window as long as the receptive
        field, so the cost is linear in the line length (lines are processed in parallel).
        """
        b = code.shape[0]
        code_lines, shape = to_lines(code, self.axis)
        feats = self._project(code_lines)
        n_lines, length = code_lines.shape[2], code_lines.shape[3]
        if not self.sees_neighbours:
            out = self.sample_from_params(self._net(None, feats).unflatten(1, (self.channels, 3, self.components)),
                                          generator)
            yield length, length
            return from_lines(out, (b, self.channels) + shape[2:], self.axis)
        rf = self.receptive_field
        x = torch.zeros(b, self.channels, n_lines, length, device=code.device, dtype=feats.dtype)
        for i in range(length):
            lo = max(0, i - rf)
            params = self._net(x[..., lo:i + 1], feats[..., lo:i + 1])[..., -1:]
            params = params.unflatten(1, (self.channels, 3, self.components))
            x[..., i:i + 1] = self.sample_from_params(params, generator)
            yield i + 1, length
        return from_lines(x, (b, self.channels) + shape[2:], self.axis)

    def sample(self, code: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """sample_iter to its end: the noisy image."""
        return run_to_end(self.sample_iter(code, generator))
