"""The signal decoder: maps the latent code to image space; trained by MSE against the noisy input."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import conv


class SignalDecoder(nn.Module):
    """conv3 + ReLU layers from the code to the image.

    Trained with MSE against the noisy image with the code's gradients stopped: for zero-mean noise
    E[x | z] is the signal, so its output is the clean image implied by one latent sample.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, f = config.spatial_dims, config.features
        hidden = config.signal_decoder_features or f
        layers: list[nn.Module] = []
        c_in = f
        for _ in range(config.signal_decoder_layers - 1):
            layers += [conv(d, c_in, hidden), nn.ReLU()]
            c_in = hidden
        layers.append(conv(d, c_in, config.in_channels))
        self.net = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)
