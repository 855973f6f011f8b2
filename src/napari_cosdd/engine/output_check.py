"""Is the denoised output better than the input? An estimate that needs no clean image.

COSDD's noise is correlated along one axis at most (the orientation), so along every other spatial axis
neighbouring pixels share signal but not noise. That gives two estimates from covariances across those
axes, at lags 1 to 3, extrapolated to lag 0:

* the noise variance of the input: its variance minus the part that is correlated across the axis (the
  signal's); and
* a floor under the output's error: the part of the residual (input - output) that is correlated across
  the axis, which noise cannot explain, plus the residual's mean (a shift of the whole image).

Their ratio bounds the gain from above: the output is at most ``gain_at_most_db`` better than the input.
When that bound is below zero, the output's error is at least as large as the noise it removed, and the
output is likely worse than the input. ``structure_lost`` is the share of the input's cross-axis
structure that went into the residual: 0 for a perfect output, 1 for a flat one.

The floor is tight when the error is smooth (a flat or blurred output, the failures that matter) and
loose for a good denoiser, whose residual is mostly noise. Measured against the clean frames of the
real-data matrix in docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Below this bound on the gain (dB) the output counts as no better than the input.
WORSE_DB = 0.0
#: Below this bound the gain is too small to be sure of.
DOUBTFUL_DB = 1.0
#: Above this share of the input's structure in the residual, the output has lost detail.
STRUCTURE_LOST = 0.5
#: A covariance counts as zero within this many standard errors of white data.
SIGNIFICANT = 4.0
#: At most this many frames are looked at (evenly spaced), each in a central box at most this large per
#: axis: the estimate needs no more, and its memory stays bounded (about 35 MB per copy in float64).
MAX_FRAMES = 16
MAX_SIDE = {"Z": 64, "Y": 512, "X": 512}
#: A frame is judged on its own as well when it has at least this many pixels (in the box looked at): a
#: 128x128 frame holds its noise estimate within a few per cent.
MIN_FRAME_PIXELS = 128 * 128


@dataclass
class OutputCheck:
    """The estimate for one output. Variances are in the images' units squared."""

    axes: str                 # the spatial axes the covariances were taken across (noise not correlated)
    noise_variance: float     # estimated noise variance of the input
    error_floor: float        # the output's mean squared error is at least about this
    gain_at_most_db: float    # 10 log10(noise_variance / error_floor); inf when the floor is 0
    structure_lost: float     # share of the input's cross-axis structure left in the residual
    verdict: str              # "ok", "doubtful" or "worse"
    message: str

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("axes", "noise_variance", "error_floor", "gain_at_most_db",
                                              "structure_lost", "verdict", "message")}


def _covariances(frames: np.ndarray, axis: int) -> np.ndarray:
    """Covariance at lags 0..3 along ``axis`` (>= 1) of frames (n, *spatial), each frame's mean removed."""
    r = frames - frames.mean(axis=tuple(range(1, frames.ndim)), keepdims=True)
    out = []
    for k in range(4):
        a = np.take(r, np.arange(0, r.shape[axis] - k), axis=axis)
        b = np.take(r, np.arange(k, r.shape[axis]), axis=axis)
        out.append(float(np.mean(a * b)))
    return np.array(out)


def _correlated_part(c: np.ndarray, n: int) -> float:
    """The lag-0 value of the part of a covariance that is correlated across the axis, from lags 1-3.

    A parabola through log c at lags 1, 2, 3 is exact for both shapes that images show: an exponential
    fall (sharp edges, sparse objects) and a Gaussian one (smooth signal); it is capped by the exponential
    extrapolation from lags 1 and 2. A lag whose covariance is within sampling error of zero (SIGNIFICANT
    standard errors of white data over n pixels) counts as zero: lag 1 then gives 0, lag 2 gives lag 1's
    value, and without lag 3 the smaller of a linear and an exponential extrapolation stands in.
    """
    c1, c2, c3 = c[1], c[2], c[3]
    noise_level = SIGNIFICANT * c[0] / np.sqrt(max(n, 1))
    if c1 <= noise_level:
        return 0.0
    if c2 <= noise_level:
        return float(c1)
    if c1 > c2 > c3 > noise_level:
        value = min(c1**3 * c3 / c2**3, c1 * c1 / c2)
    else:
        value = min(2 * c1 - c2, c1 * c1 / c2)
    return float(min(max(value, c1), c[0]))


def _estimate(y: np.ndarray, r: np.ndarray, across: list[int]) -> tuple[float, float, float, float]:
    """(gain bound in dB, noise variance, error floor, structure lost) for frames y (n, *spatial) of one
    channel and their residual r = input - output, from covariances across the axes ``across``."""
    cy = np.mean([_covariances(y, 1 + i) for i in across], axis=0)
    cr = np.mean([_covariances(r, 1 + i) for i in across], axis=0)
    noise = cy[0] - _correlated_part(cy, y.size)
    floor = _correlated_part(cr, r.size) + float(np.mean(r.mean(axis=tuple(range(1, r.ndim))) ** 2))
    lost = cr[1] / cy[1] if cy[1] > 0 else float("nan")
    gain = float("inf") if floor <= 0 else 10 * np.log10(max(noise, 1e-300) / floor)
    return gain, noise, floor, float(np.clip(lost, 0.0, 1.0))


def _verdict(gain: float, lost: float) -> str:
    if gain < WORSE_DB:
        return "worse"
    return "doubtful" if gain < DOUBTFUL_DB or lost > STRUCTURE_LOST else "ok"


def check_region(n_frames: int, spatial: tuple[int, ...], spatial_axes: str) -> tuple[np.ndarray, tuple]:
    """The frames (evenly spaced, at most MAX_FRAMES) and the central box of each that check_output looks
    at; work done frame by frame keeps only these."""
    pick = np.unique(np.linspace(0, n_frames - 1, min(n_frames, MAX_FRAMES)).round().astype(int))
    box = tuple(slice(max(0, (n - m) // 2), max(0, (n - m) // 2) + m)
                for n, m in zip(spatial, [MAX_SIDE.get(a, 512) for a in spatial_axes]))
    return pick, box


def check_output(noisy: np.ndarray, output: np.ndarray, spatial_axes: str, orientation: str,
                 frame_numbers=None) -> OutputCheck:
    """Estimate whether ``output`` improves on ``noisy``.

    noisy, output : (N, C, *spatial) arrays in the same units (frames and channels).
    spatial_axes : "YX" or "ZYX", naming the trailing axes.
    orientation : the axis letter the noise is correlated along ("x", "y", "z") or "none".
    frame_numbers : what the frames are called in messages (the user's frame numbers, when these frames
        are a few picked from a longer stack); their positions by default.
    The worst channel decides the verdict, and so does the worst frame when it is not ok
    while the stack as a whole is.
    """
    if np.shape(noisy) != np.shape(output):
        raise ValueError(f"noisy {np.shape(noisy)} and output {np.shape(output)} differ in shape")
    if np.ndim(noisy) != len(spatial_axes) + 2:
        raise ValueError(f"expected (N, C, {', '.join(spatial_axes)}) arrays, got {np.ndim(noisy)} axes")
    # Only the frames looked at, and a central box of each, are copied: the memory stays bounded.
    pick, box = check_region(len(noisy), np.shape(noisy)[2:], spatial_axes)
    noisy = np.asarray(noisy[(pick, slice(None)) + box], dtype=np.float64)
    output = np.asarray(output[(pick, slice(None)) + box], dtype=np.float64)
    across = [i for i, a in enumerate(spatial_axes) if a.lower() != orientation and noisy.shape[2 + i] >= 8]
    if not across:
        return OutputCheck("", float("nan"), float("nan"), float("nan"), float("nan"), "ok",
                           "the image is too small across the noise's axis to check the output")
    n_ch = noisy.shape[1]
    per_channel = [_estimate(noisy[:, ch], noisy[:, ch] - output[:, ch], across) for ch in range(n_ch)]
    gain, noise, floor, lost = min(per_channel)
    letters = "".join(spatial_axes[i] for i in across)
    if not noise > 1e-6 * max(float(np.var(noisy)), 1e-300):
        return OutputCheck(letters, noise, floor, float("nan"), lost, "ok",
                           "the input looks nearly noise-free across its rows; the output was not checked")
    where = f" (channel {per_channel.index(min(per_channel))})" if n_ch > 1 else ""
    # A stack can be fine on the whole and wrong on one frame (a dark frame given a false offset): each
    # frame large enough for its own estimate is judged as well, and the worst one speaks if its bound
    # on the gain is too low.
    verdict = _verdict(gain, lost)
    if verdict == "ok" and len(pick) > 1 and np.prod(noisy.shape[2:]) >= MIN_FRAME_PIXELS:
        per_frame = [(_estimate(noisy[k:k + 1, ch], noisy[k:k + 1, ch] - output[k:k + 1, ch], across), k, ch)
                     for k in range(len(pick)) for ch in range(n_ch)]
        (f_gain, f_noise, f_floor, f_lost), k, ch = min(per_frame)
        # by its gain alone: one frame's share of structure is unsteady where the frame is nearly empty
        if f_gain < DOUBTFUL_DB:
            gain, noise, floor, lost = f_gain, f_noise, f_floor, f_lost
            verdict = _verdict(gain, lost)
            number = int(pick[k]) if frame_numbers is None else int(frame_numbers[pick[k]])
            where = f" (frame {number}" + (f", channel {ch}" if n_ch > 1 else "") + ")"
    if verdict == "worse":
        message = (f"the output is likely WORSE than the input{where}: its error is at least "
                   f"{-gain:.1f} dB above the noise it removed. Train longer, check the orientation, or use the "
                   "input as it is")
    elif verdict == "doubtful":
        message = (f"the output may be little better than the input{where}: at most {gain:+.1f} dB, and the "
                   f"residual holds {100 * lost:.0f}% of the image's structure. Train longer, or check the "
                   "orientation")
    else:
        bound = f"; the gain is at most {gain:+.1f} dB" if gain < 20 else ""
        message = (f"the residual (input - output) looks like noise{where}: it holds {100 * lost:.0f}% of the "
                   f"image's structure{bound}")
    return OutputCheck(letters, noise, floor, gain, lost, verdict, message)
