"""Is the posterior's spread an error bar? Measure it, and fit the one factor that makes it one.

The predicted uncertainty of a pixel is the standard deviation of the posterior samples there; the
error is the distance of the denoised value (the posterior mean) from the truth. Following the
calibration used in denoiSplit (after Laves et al.), pixels are sorted into bins of predicted std;
in each bin the root mean variance (RMV, what the model predicts) is set against the root mean
squared error (RMSE, what happened). A calibrated model lies on RMSE = RMV. The expected normalised
calibration error (ENCE) is the mean over bins of |RMV - RMSE| / RMV.

One scale factor per channel fixes most miscalibration of a VAE's spread. It minimises the Gaussian
negative log-likelihood of the truth around the posterior mean with std `scale * predicted std`,
whose minimum has a closed form: scale^2 = mean(error^2 / std^2).

Where the error has a floor that the spread does not show (measured on the real-data matrix: the darkest
pixels under camera noise, whose error stays well above their tiny spread), one scale cannot fit both
ends: it inflates every other pixel's std to cover the darkest ones. A floor added in quadrature,
calibrated std = sqrt((scale * std)^2 + floor^2), fits both; it is fitted by the same likelihood (for a
given floor/scale ratio the scale has the closed form above; the ratio is searched). ``floor=False``
keeps the single scale of denoiSplit.

Pure numpy; no torch, Qt or napari.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_BINS = 20
# Predicted stds below this share of the median are floored, so a few zero-variance pixels (saturated,
# clipped) do not dominate error/std ratios.
STD_FLOOR = 1e-3


@dataclass
class Reliability:
    """RMV against RMSE in bins of predicted std (each bin holds about the same number of pixels)."""

    rmv: np.ndarray
    rmse: np.ndarray
    counts: np.ndarray

    @property
    def ence(self) -> float:
        """Mean over bins of |RMV - RMSE| / RMV (0: calibrated)."""
        keep = self.rmv > 0
        return float(np.mean(np.abs(self.rmv[keep] - self.rmse[keep]) / self.rmv[keep]))

    def scaled(self, scale: float, floor: float = 0.0) -> "Reliability":
        """The same bins with every predicted std calibrated as sqrt((scale * std)^2 + floor^2) (the
        errors do not change; a bin's RMV is the root of its mean variance, so it maps the same way)."""
        return Reliability(np.sqrt((self.rmv * scale) ** 2 + floor**2), self.rmse, self.counts)

    def to_dict(self) -> dict:
        return {"rmv": self.rmv.tolist(), "rmse": self.rmse.tolist(), "counts": self.counts.tolist(),
                "ence": self.ence}


@dataclass
class Calibration:
    """Per channel, a scale factor for the posterior std and a floor added in quadrature (image units;
    0: none), and what they were fitted on."""

    scales: list[float]
    fitted_on: str = ""
    pixels: int = 0
    ence_before: list[float] = field(default_factory=list)
    ence_after: list[float] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.floors:
            self.floors = [0.0] * len(self.scales)

    def to_dict(self) -> dict:
        return {"scales": [float(s) for s in self.scales], "floors": [float(f) for f in self.floors],
                "fitted_on": self.fitted_on, "pixels": int(self.pixels),
                "ence_before": [float(v) for v in self.ence_before],
                "ence_after": [float(v) for v in self.ence_after]}

    def describe(self) -> str:
        """E.g. "x 1.21, floor 0.034" (per channel, separated by semicolons)."""
        return "; ".join(f"x {s:.3g}" + (f", floor {f:.3g}" if f > 0 else "") for s, f in zip(self.scales, self.floors))

    def variance(self, var: np.ndarray, channel_axis: int = 0) -> np.ndarray:
        """Calibrated variance from the samples' variance, channels along `channel_axis`."""
        shape = [1] * var.ndim
        shape[channel_axis] = len(self.scales)
        scales = np.asarray(self.scales, dtype=np.float32).reshape(shape)
        floors = np.asarray(self.floors, dtype=np.float32).reshape(shape)
        return var * scales**2 + floors**2

    @classmethod
    def from_dict(cls, values: dict) -> "Calibration":
        scales = [float(s) for s in values["scales"]]
        if not scales or not all(np.isfinite(s) and s > 0 for s in scales):
            raise ValueError("a calibration needs one positive, finite scale per channel")
        floors = [float(f) for f in values.get("floors", [])] or [0.0] * len(scales)  # older files: none
        if len(floors) != len(scales) or not all(np.isfinite(f) and f >= 0 for f in floors):
            raise ValueError("a calibration's floors must be one non-negative, finite value per channel")
        return cls(scales=scales, fitted_on=str(values.get("fitted_on", "")), pixels=int(values.get("pixels", 0)),
                   ence_before=[float(v) for v in values.get("ence_before", [])],
                   ence_after=[float(v) for v in values.get("ence_after", [])], floors=floors)

    def apply(self, std: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
        """The calibrated std: sqrt((scale * std)^2 + floor^2), each channel with its own."""
        std = np.asarray(std)
        if channel_axis is None:
            if len(self.scales) != 1:
                raise ValueError(f"the calibration has {len(self.scales)} channels; say which axis holds them")
            return np.sqrt((std * self.scales[0]) ** 2 + self.floors[0] ** 2).astype(std.dtype, copy=False)
        if std.shape[channel_axis] != len(self.scales):
            raise ValueError(f"the std has {std.shape[channel_axis]} channels, the calibration "
                             f"{len(self.scales)}")
        return np.sqrt(self.variance(std**2, channel_axis)).astype(std.dtype, copy=False)


def _pairs(std, mean, truth, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (predicted std, error) of the finite pixels (inside the mask), std floored."""
    std = np.asarray(std, dtype=np.float64)
    err = np.asarray(mean, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    if std.shape != err.shape:
        raise ValueError(f"the std {std.shape} and the images {err.shape} differ in shape")
    keep = np.isfinite(std) & np.isfinite(err)
    if mask is not None:
        keep &= np.broadcast_to(np.asarray(mask, dtype=bool), keep.shape)
    std, err = std[keep], err[keep]
    if std.size == 0:
        raise ValueError("no pixels to calibrate on (the mask or the images leave none)")
    positive = std[std > 0]
    floor = STD_FLOOR * (float(np.median(positive)) if positive.size else 1.0)
    return np.maximum(std, floor), err


def reliability(std, mean, truth, bins: int = DEFAULT_BINS, mask=None) -> Reliability:
    """RMV and RMSE in `bins` bins of predicted std, with equal numbers of pixels per bin."""
    s, e = _pairs(std, mean, truth, mask)
    order = np.argsort(s, kind="stable")
    groups = np.array_split(order, min(bins, s.size))
    rmv = np.array([np.sqrt(np.mean(s[g] ** 2)) for g in groups])
    rmse = np.array([np.sqrt(np.mean(e[g] ** 2)) for g in groups])
    return Reliability(rmv, rmse, np.array([g.size for g in groups]))


def fit_scale(std, mean, truth, mask=None) -> float:
    """The factor on the std that minimises the Gaussian NLL of `truth` around `mean`."""
    s, e = _pairs(std, mean, truth, mask)
    return float(np.sqrt(np.mean((e / s) ** 2)))


def _profile_nll(s2: np.ndarray, e2: np.ndarray, c2: float) -> tuple[float, float]:
    """For variance a^2 (s^2 + c^2): the best a^2 (closed form) and the mean NLL at it (less constants)."""
    v = s2 + c2
    a2 = float(np.mean(e2 / v))
    return float(np.log(a2) + np.mean(np.log(v))), a2


def fit_scale_floor(std, mean, truth, mask=None) -> tuple[float, float]:
    """Scale and floor of sqrt((scale * std)^2 + floor^2) that minimise the Gaussian NLL of `truth`
    around `mean`. The floor/scale ratio is searched on a log grid (then refined); 0 is a candidate, so
    a spread without an error floor keeps the single scale."""
    s, e = _pairs(std, mean, truth, mask)
    s2, e2 = s**2, e**2
    if s2.size > 400_000:  # the likelihood is a mean: an even subsample gives the same optimum
        step = s2.size // 400_000 + 1
        s2, e2 = s2[::step], e2[::step]
    median = float(np.median(s))
    ratios = np.concatenate([[0.0], median * np.logspace(-3, 2, 41)])
    scores = [_profile_nll(s2, e2, r**2)[0] for r in ratios]
    best = int(np.argmin(scores))
    if best > 0:  # golden-section search between the grid neighbours (log scale)
        lo = np.log(ratios[max(best - 1, 1)])
        hi = np.log(ratios[min(best + 1, len(ratios) - 1)])
        g = (np.sqrt(5) - 1) / 2
        for _ in range(40):
            m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
            if _profile_nll(s2, e2, np.exp(2 * m1))[0] < _profile_nll(s2, e2, np.exp(2 * m2))[0]:
                hi = m2
            else:
                lo = m1
        ratio = float(np.exp((lo + hi) / 2))
        if _profile_nll(s2, e2, ratio**2)[0] > scores[best]:
            ratio = float(ratios[best])
    else:
        ratio = 0.0
    a2 = _profile_nll(s2, e2, ratio**2)[1]
    return float(np.sqrt(a2)), float(np.sqrt(a2) * ratio)


def coverage(std, mean, truth, scale: float = 1.0, mask=None, floor: float = 0.0) -> dict[str, float]:
    """Share of pixels whose truth lies within the 68 % and 95 % Gaussian intervals around the mean."""
    s, e = _pairs(std, mean, truth, mask)
    z = np.abs(e) / np.sqrt((scale * s) ** 2 + floor**2)
    return {"68": float(np.mean(z <= 1.0)), "95": float(np.mean(z <= 1.959964))}


def calibrate(std, mean, truth, channel_axis: int | None = None, fitted_on: str = "", mask=None,
              bins: int = DEFAULT_BINS, floor: bool = True) -> Calibration:
    """Fit a scale (and with `floor`, a floor) per channel (the channel axis of the arrays, or one channel
    when None)."""
    std, mean, truth = np.asarray(std), np.asarray(mean), np.asarray(truth)
    if channel_axis is None:
        channels = [(std, mean, truth, mask)]
    else:
        mask_c = (lambda c: None) if mask is None else (lambda c: np.take(np.broadcast_to(mask, std.shape), c,
                                                                           axis=channel_axis))
        channels = [(np.take(std, c, axis=channel_axis), np.take(mean, c, axis=channel_axis),
                     np.take(truth, c, axis=channel_axis), mask_c(c)) for c in range(std.shape[channel_axis])]
    return _report(*zip(*channels), fitted_on=fitted_on, matched=[], bins=bins, min_pixels=0,
                   floor=floor).calibration


# ---------------------------------------------------------------------------- a user's calibration

MIN_PIXELS = 1000
MATCHES = ("affine", "none")


@dataclass
class CalibrationReport:
    """What a calibration found, per channel: the fit, and RMV against RMSE before and after it."""

    calibration: Calibration
    before: list[Reliability]
    after: list[Reliability]
    coverage_before: list[dict[str, float]]
    coverage_after: list[dict[str, float]]
    matched: list[tuple[float, float]] = field(default_factory=list)  # reference -> image: gain, offset

    @property
    def message(self) -> str:
        parts = []
        cal = self.calibration
        for c, (scale, floor, b, a) in enumerate(zip(cal.scales, cal.floors, self.before, self.after)):
            name = f"channel {c}: " if len(cal.scales) > 1 else ""
            cover = self.coverage_after[c]
            how = f"std x {scale:.3g}" + (f", floor {floor:.3g}" if floor > 0 else "")
            parts.append(f"{name}{how}; ENCE {b.ence:.2f} -> {a.ence:.2f}; the truth lies within "
                         f"+-1 std at {100 * cover['68']:.0f} % of pixels (68 % expected), within +-2 std at "
                         f"{100 * cover['95']:.0f} % (95 %)")
        return "; ".join(parts)


def _channels(array: np.ndarray) -> list[np.ndarray]:
    """(N, C, *spatial) -> per channel, (N, *spatial)."""
    return [array[:, c] for c in range(array.shape[1])]


def _report(stds, means, truths, masks, fitted_on: str, matched, bins: int,
            min_pixels: int = MIN_PIXELS, floor: bool = True) -> CalibrationReport:
    """Per channel: the scale (and floor), RMV against RMSE before and after, and the coverage (masks may
    be None)."""
    scales, floors, before, after, cov_b, cov_a, pixels = [], [], [], [], [], [], 0
    for s, m, t, k in zip(stds, means, truths, masks):
        marked = int(np.size(s) if k is None else np.count_nonzero(k))
        if marked < min_pixels:
            raise ValueError(f"only {marked} pixels to calibrate on; mark at least {min_pixels}")
        scale, fl = fit_scale_floor(s, m, t, k) if floor else (fit_scale(s, m, t, k), 0.0)
        rel = reliability(s, m, t, bins, k)
        scales.append(scale)
        floors.append(fl)
        before.append(rel)
        after.append(rel.scaled(scale, fl))
        cov_b.append(coverage(s, m, t, 1.0, k))
        cov_a.append(coverage(s, m, t, scale, k, fl))
        pixels += int(rel.counts.sum())  # the finite pixels used
    cal = Calibration(scales, fitted_on=fitted_on, pixels=pixels, ence_before=[r.ence for r in before],
                      ence_after=[r.ence for r in after], floors=floors)
    return CalibrationReport(cal, before, after, cov_b, cov_a, matched)


def fit_to_reference(std, mean, reference, mask=None, match: str = "affine", fitted_on: str = "a reference image",
                     bins: int = DEFAULT_BINS, floor: bool = True) -> CalibrationReport:
    """Calibrate against a low-noise image of the same sample (a long exposure, an average of repeats).

    Arrays are (N, C, *spatial). With match "affine" the reference is first mapped onto the denoised
    image's intensities by a least-squares gain and offset per channel (a longer exposure has other
    counts); "none" takes it as it is. The reference's own noise counts as error, so it must be much
    less noisy than the posterior std (average enough repeats).
    """
    std, mean, reference = (np.asarray(a, dtype=np.float64) for a in (std, mean, reference))
    if reference.shape != mean.shape:
        raise ValueError(f"the reference has shape {reference.shape} but the image {mean.shape}; give an image "
                         "of the same field of view and size")
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}")
    keep = np.ones(mean.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), mean.shape)
    keep = keep & np.isfinite(reference) & np.isfinite(mean)
    truths, matched = [], []
    for c, (m, r, k) in enumerate(zip(_channels(mean), _channels(reference), _channels(keep))):
        gain, offset = 1.0, 0.0
        if match == "affine":
            rv, mv = r[k], m[k]
            spread = float(np.var(rv))
            if spread <= 0:
                raise ValueError("the reference is flat where it is used: it cannot be matched to the image")
            gain = float(np.mean((rv - rv.mean()) * (mv - mv.mean())) / spread)
            offset = float(mv.mean() - gain * rv.mean())
            if gain <= 0:
                raise ValueError(f"channel {c} of the reference does not rise where the image does (gain "
                                 f"{gain:.3g}): is it the same field of view, the same way round?")
        truths.append(gain * r + offset)
        matched.append((gain, offset))
    return _report(_channels(std), _channels(mean), truths, _channels(keep), fitted_on, matched, bins, floor=floor)


def fit_to_background(std, mean, noisy, mask, fitted_on: str = "a background region",
                      bins: int = DEFAULT_BINS, floor: bool = False) -> CalibrationReport:
    """Calibrate on a region known to be flat background: there the truth is one level per image and
    channel, estimated as the noisy input's mean in the region (the noise averages out over its pixels).

    Arrays are (N, C, *spatial); `mask` (True: background) broadcasts to them. Only the background's
    pixels are used, so the fit says how the std behaves on dark, flat parts of the image. Their stds
    span a narrow range, in which a scale and a floor cannot be told apart: one scale is fitted unless
    `floor` is asked for.
    """
    std, mean, noisy = (np.asarray(a, dtype=np.float64) for a in (std, mean, noisy))
    keep = np.broadcast_to(np.asarray(mask, bool), mean.shape)
    truths = []
    for n_c, k in zip(_channels(noisy), _channels(keep)):
        levels = np.array([plane[kp].mean() if kp.any() else np.nan for plane, kp in zip(n_c, k)])
        truths.append(np.broadcast_to(levels.reshape((-1,) + (1,) * (n_c.ndim - 1)), n_c.shape))
    return _report(_channels(std), _channels(mean), truths, _channels(keep), fitted_on, [], bins, floor=floor)
