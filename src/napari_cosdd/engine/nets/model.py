"""The COSDD model: ladder VAE + AR noise decoder + signal decoder + Direct Denoiser, and its losses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ar_decoder import ARDecoder
from ..config import ModelConfig
from .direct_denoiser import DirectDenoiser
from .ladder_vae import LadderVAE
from ..progress import run_to_end
from .signal_decoder import SignalDecoder


class COSDD(nn.Module):
    """All networks of one model, with the per-channel normalisation of its training data."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.vae = LadderVAE(config)
        self.ar_decoder = ARDecoder(config)
        self.signal_decoder = SignalDecoder(config)
        self.direct_denoiser = DirectDenoiser(**DirectDenoiser.arguments(config)) if config.direct_denoiser else None
        self.register_buffer("data_mean", torch.zeros(config.in_channels))
        self.register_buffer("data_std", torch.ones(config.in_channels))
        # A Calibration (engine.calibration) of the posterior std, fitted by the user; training clears it.
        self.calibration = None

    # ------------------------------------------------------------ parameter groups

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Each loss updates its own networks, with its own optimiser."""
        groups = {
            "elbo": list(self.vae.parameters()) + list(self.ar_decoder.parameters()),
            "signal": list(self.signal_decoder.parameters()),
        }
        if self.direct_denoiser is not None:
            groups["direct"] = list(self.direct_denoiser.parameters())
        return groups

    # ------------------------------------------------------------ normalisation

    def _stat_view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.view((1, -1) + (1,) * (x.dim() - 2)).to(x.dtype)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._stat_view(self.data_mean, x)) / self._stat_view(self.data_std, x)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._stat_view(self.data_std, x) + self._stat_view(self.data_mean, x)

    def set_normalisation(self, mean, std) -> None:
        self.data_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.data_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    # ------------------------------------------------------------ training

    def losses(self, x: torch.Tensor, direct: bool = True) -> dict[str, torch.Tensor]:
        """All losses for a batch of normalised crops x (B, C, *spatial).

        elbo = KL per pixel + mean negative log-likelihood (nats per pixel); ``kl_levels`` is the KL of
        each level (finest first, detached) for watching the latents. The signal decoder and the
        Direct Denoiser see the code and the target with gradients stopped, so the three losses can be
        summed and back-propagated once while each still updates only its own networks. With
        ``direct=False`` the Direct Denoiser is left out of this step (no "direct" loss).
        """
        code, kl_levels = self.vae(x)
        pixels = math.prod(x.shape[1:])
        kl_levels = (kl_levels / pixels).mean(0)  # nats per pixel, per level (finest first)
        kl = kl_levels.sum()
        params = self.ar_decoder(x, code)
        nll = -self.ar_decoder.log_likelihood(x.float(), params.float()).mean()
        signal = self.signal_decoder(code.detach())
        out = {"elbo": kl + nll, "kl": kl, "nll": nll, "signal": F.mse_loss(signal.float(), x.float()),
               "kl_levels": kl_levels.detach()}
        if self.direct_denoiser is not None and direct:
            pred = self.direct_denoiser(x).float()
            target = signal.detach().float()
            if self.config.direct_loss == "l1":
                out["direct"] = F.l1_loss(pred, target)
            else:
                out["direct"] = F.mse_loss(pred, target)
        return out

    # ------------------------------------------------------------ inference (normalised units)

    def posterior_sample(self, x: torch.Tensor, n: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples of the clean image for each image in x, (n * B, C, *spatial), sample-major.

        The bottom-up pass is deterministic, so it runs once and only the top-down pass and the
        signal decoder run per sample.
        """
        return self.sample_from(self.vae.bottom_up(x), n, generator)

    def sample_from(self, skips: list[torch.Tensor], n: int = 1,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples given the bottom-up values of x (``vae.bottom_up(x)``), as posterior_sample.

        Inference keeps one tile's bottom-up values for all of its samples: on the `cpu` preset that
        pass is 40 % of a sample's cost.
        """
        if n > 1:
            skips = [s.repeat((n,) + (1,) * (s.dim() - 1)) for s in skips]
        code, _ = self.vae.top_down(skips, generator=generator)
        return self.signal_decoder(code)

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        if self.direct_denoiser is None:
            raise ValueError("this model was trained without a Direct Denoiser; use the 'sample' method")
        return self.direct_denoiser(x)

    @torch.no_grad()
    def generate_noisy_iter(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Encode x, then draw a new noisy image from the AR decoder (checks the learned noise), as a
        generator of (done, total) positions that returns (noisy, signal): the signal decoder's output
        for the same latents, so that noisy - signal is the noise the model drew."""
        code, _ = self.vae(x, generator=generator)
        noisy = yield from self.ar_decoder.sample_iter(code, generator)
        return noisy, self.signal_decoder(code)

    def generate_noisy(self, x: torch.Tensor, return_signal: bool = False,
                       generator: torch.Generator | None = None):
        """generate_noisy_iter to its end: the noisy image, and with return_signal its signal too."""
        noisy, signal = run_to_end(self.generate_noisy_iter(x, generator))
        return (noisy, signal) if return_signal else noisy
