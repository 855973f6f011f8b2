"""Checking a trained noise model: sample new noise from it and compare it with the real noise.

The AR decoder is the model's idea of the noise. Given an image, we take its signal estimate, let the
decoder draw a fresh noisy image around it, and compare the two residuals (noisy - signal): their
autocorrelation, and their variance as a function of the signal (the noise's signal dependence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .autocorrelation import EVIDENCE_LAGS, NoiseAutocorrelation, noise_autocorrelation
from .device import resolve_device
from .inference import InferenceEvent, borrow, denoise, generate_noisy_iter
from .nets.model import COSDD
from .progress import run_to_end


@dataclass
class NoiseCheck:
    """Real and generated noise side by side; images are (C, *spatial) crops in image units."""

    real: np.ndarray
    generated: np.ndarray
    signal: np.ndarray
    spatial_axes: str
    real_autocorrelation: NoiseAutocorrelation
    generated_autocorrelation: NoiseAutocorrelation
    signal_bins: np.ndarray      # centre of each signal bin
    real_variance: np.ndarray    # noise variance per bin
    generated_variance: np.ndarray
    generated_signal: np.ndarray | None = None  # the signal the generated image was drawn around

    def summary(self) -> str:
        lines = ["noise autocorrelation, real vs generated (lags " + ", ".join(map(str, EVIDENCE_LAGS)) + "):"]
        for a in self.real_autocorrelation.profiles:
            real = self.real_autocorrelation.profiles[a]
            gen = self.generated_autocorrelation.profiles[a]
            lags = [k for k in EVIDENCE_LAGS if k < len(real)]
            lines.append(f"  along {a}: real " + " ".join(f"{real[k]:+.2f}" for k in lags)
                         + " | generated " + " ".join(f"{gen[k]:+.2f}" for k in lags))
        lines.append("noise variance by signal level (real vs generated):")
        for s, vr, vg in zip(self.signal_bins, self.real_variance, self.generated_variance):
            ratio = vg / vr if vr > 0 else float("nan")
            lines.append(f"  signal {s:10.4g}: real {vr:10.4g}  generated {vg:10.4g}  ratio {ratio:5.2f}")
        around = self.signal if self.generated_signal is None else self.generated_signal
        total_r, total_g = float(np.var(self.real - self.signal)), float(np.var(self.generated - around))
        lines.append(f"overall noise variance: real {total_r:.4g}, generated {total_g:.4g} "
                     f"(ratio {total_g / total_r if total_r > 0 else float('nan'):.2f}; near 1 is good)")
        return "\n".join(lines)


def _variance_by_signal(signal: np.ndarray, residual: np.ndarray, edges: np.ndarray) -> np.ndarray:
    which = np.clip(np.searchsorted(edges, signal.ravel(), side="right") - 1, 0, len(edges) - 2)
    r = residual.ravel().astype(np.float64)
    out = np.full(len(edges) - 1, np.nan)
    for b in range(len(edges) - 1):
        sel = r[which == b]
        if sel.size > 1:
            out[b] = sel.var()
    return out


def check_noise_iter(model: COSDD, image, axes: str, device: str = "auto", max_side: int = 256,
                     bins: int = 8, max_lag: int = 10, seed: int | None = 0):
    """check_noise as a generator of progress events (InferenceEvent) that returns the NoiseCheck;
    closing it stops at the next position the noise model draws."""
    model = borrow(model, resolve_device(device))  # one eval-mode copy (at most) for both passes below
    real, generated, drawn_around = yield from generate_noisy_iter(model, image, axes, device=device,
                                                                   max_side=max_side, seed=seed)
    yield InferenceEvent(1, 1, "denoising the crop to compare the noise")
    spatial = "ZYX" if model.config.spatial_dims == 3 else "YX"
    crop_axes = "C" + spatial
    if model.direct_denoiser is not None:
        signal = denoise(model, real, crop_axes, method="direct", device=device).direct
    else:
        signal = denoise(model, real, crop_axes, method="sample", n_samples=8, variance=False,
                         device=device, seed=seed).mean
    ac_real = noise_autocorrelation(real, crop_axes, denoised=signal, max_lag=max_lag)
    ac_gen = noise_autocorrelation(generated, crop_axes, denoised=drawn_around, max_lag=max_lag)
    edges = np.unique(np.quantile(signal, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([signal.min(), signal.max() + 1e-6])
    centres = 0.5 * (edges[:-1] + edges[1:])
    return NoiseCheck(real, generated, signal, spatial, ac_real, ac_gen, centres,
                      _variance_by_signal(signal, real - signal, edges),
                      _variance_by_signal(drawn_around, generated - drawn_around, edges),
                      generated_signal=drawn_around)


def check_noise(model: COSDD, image, axes: str, device: str = "auto", max_side: int = 256,
                bins: int = 8, max_lag: int = 10, seed: int | None = 0) -> NoiseCheck:
    """Generate a noisy image from the model on (a central crop of) `image` and compare its noise."""
    return run_to_end(check_noise_iter(model, image, axes, device, max_side, bins, max_lag, seed))
