"""Seeded synthetic fluorescence-like images and zero-mean correlated noises for tests, samples and benchmarks."""

from __future__ import annotations

from functools import reduce

import numpy as np

NOISE_KINDS = ("stripes", "checkerboard", "camera")
IMAGE_KINDS = ("blobs", "filaments", "texture", "mixed")

_BACKGROUND = 0.06  # dim floor of "mixed" images: dark, but never exactly 0
_SATURATION_QUANTILE = 0.999  # the brightest 0.1 % of pixels saturate at 1
_SPOT_RADIUS = 3.5  # Gaussian spots are drawn out to this many sigmas
_FILAMENT_SIGMA = 1.0  # blur of the filaments (pixels): about 2.4 px FWHM
_TEXTURE_SIGMAS = (3.0, 8.0, 20.0)  # scales (pixels) of the texture field
_TEXTURE_WEIGHTS = (0.4, 1.0, 1.0)
# Per pixel (2-D) or voxel (3-D): expected number of spots, and filament length.
_SPOT_DENSITY = {2: 1 / 1200, 3: 1 / 8000}
_FILAMENT_DENSITY = {2: 0.04, 3: 0.004}


# --------------------------------------------------------------------------
# Gaussian filtering with numpy FFTs (periodic boundaries)
# --------------------------------------------------------------------------


def _kernel_spectrum(n: int, sigma: float, norm: str, onesided: bool) -> np.ndarray:
    """DFT of a sampled Gaussian kernel centred on 0 and wrapped onto ``n`` samples.

    Parameters
    ----------
    n : int
        Length of the axis the kernel is applied along.
    sigma : float
        Standard deviation of the kernel in pixels; ``<= 0`` gives the identity.
    norm : {"sum", "l2"}
        Normalise the wrapped kernel to unit sum (a blur that keeps the mean)
        or to unit L2 norm (a filter that keeps the std of white noise).
    onesided : bool
        Return the ``rfft`` half spectrum instead of the full ``fft``.

    Returns
    -------
    numpy.ndarray
        Real spectrum (the kernel is symmetric, so its DFT is real).
    """
    kernel = np.zeros(n)
    if sigma <= 0:
        kernel[0] = 1.0
    else:
        offsets = np.arange(-int(np.ceil(4 * sigma)), int(np.ceil(4 * sigma)) + 1)
        np.add.at(kernel, offsets % n, np.exp(-0.5 * (offsets / sigma) ** 2))
    kernel /= kernel.sum() if norm == "sum" else np.sqrt(np.sum(kernel**2))
    spectrum = np.fft.rfft(kernel) if onesided else np.fft.fft(kernel)
    return spectrum.real


def _gaussian_filter(a: np.ndarray, sigma: float, axes: tuple[int, ...], norm: str = "sum") -> np.ndarray:
    """Separable, periodic Gaussian filter of ``a`` along ``axes``.

    Parameters
    ----------
    a : numpy.ndarray
        Real array (float32 stays float32).
    sigma : float
        Kernel standard deviation in pixels, the same along every axis.
    axes : tuple of int
        Axes to filter along.
    norm : {"sum", "l2"}
        Kernel normalisation, see `_kernel_spectrum`.

    Returns
    -------
    numpy.ndarray
        Filtered array, same shape and dtype as ``a``.
    """
    axes = tuple(sorted(ax % a.ndim for ax in axes))
    transfer = np.ones((1,) * a.ndim, dtype=a.dtype)
    for ax in axes:
        spectrum = _kernel_spectrum(a.shape[ax], sigma, norm, onesided=ax == axes[-1])
        view = [1] * a.ndim
        view[ax] = spectrum.size
        transfer = transfer * spectrum.astype(a.dtype).reshape(view)
    spectrum = np.fft.rfftn(a, axes=axes) * transfer
    filtered = np.fft.irfftn(spectrum, s=[a.shape[ax] for ax in axes], axes=axes)
    return filtered.astype(a.dtype, copy=False)


# --------------------------------------------------------------------------
# Clean images
# --------------------------------------------------------------------------


def _check_shape(shape) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of positive ints, checking it is 2-D or 3-D."""
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be 2-D (Y, X) or 3-D (Z, Y, X) with positive sizes, got {shape}")
    return shape


def _rescale(a: np.ndarray, low: float = 0.0) -> np.ndarray:
    """Map ``a`` linearly onto ``[low, 1]``, saturating the brightest 0.1 % of pixels."""
    sample = a.ravel()[:: max(1, a.size // 200_000)]
    lo, hi = float(a.min()), float(np.quantile(sample, _SATURATION_QUANTILE))
    if hi <= lo:
        hi = float(a.max())
    if hi <= lo:
        return np.full(a.shape, low, dtype=np.float32)
    scaled = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    return (low + (1.0 - low) * scaled).astype(np.float32)


def _add_spot(canvas: np.ndarray, centre: np.ndarray, sigma: float, amplitude: float) -> None:
    """Add an isotropic Gaussian spot to ``canvas`` in place, within a local window."""
    window, profiles = [], []
    for c, n in zip(centre, canvas.shape):
        lo = max(int(np.floor(c - _SPOT_RADIUS * sigma)), 0)
        hi = min(int(np.ceil(c + _SPOT_RADIUS * sigma)) + 1, n)
        profiles.append(np.exp(-0.5 * ((np.arange(lo, hi) - c) / sigma) ** 2))
        window.append(slice(lo, hi))
    canvas[tuple(window)] += amplitude * reduce(np.multiply.outer, profiles)


def _blobs(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian spots of log-uniform sizes (1 to 8 px) and random brightness."""
    n_spots = max(1, round(np.prod(shape) * _SPOT_DENSITY[len(shape)]))
    centres = rng.uniform(0, shape, size=(n_spots, len(shape)))
    sigmas = np.exp(rng.uniform(np.log(1.0), np.log(8.0), size=n_spots))
    amplitudes = rng.uniform(0.2, 1.0, size=n_spots)
    canvas = np.zeros(shape, dtype=np.float32)
    for centre, sigma, amplitude in zip(centres, sigmas, amplitudes):
        _add_spot(canvas, centre, sigma, amplitude)
    return canvas


def _filament_vertices(shape: tuple[int, ...], n: int, step: float, rng: np.random.Generator):
    """Smooth random curves: unit-speed walks whose direction bends smoothly.

    Returns
    -------
    vertices : numpy.ndarray
        Positions, shape ``(n_steps + 1, n, ndim)``, ``step`` pixels apart.
    lengths : numpy.ndarray
        Length of each curve in pixels, shape ``(n,)``.
    """
    ndim = len(shape)
    lengths = rng.uniform(0.4, 1.2, size=n) * max(shape)
    n_steps = int(np.ceil(lengths.max() / step))
    # In 3-D, damp motion along Z so that curves stay a while in the thin Z range.
    flatten = np.where(np.arange(ndim) == 0, 0.3, 1.0) if ndim == 3 else np.ones(ndim)
    direction = flatten * rng.standard_normal((n, ndim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    bend = rng.uniform(0.01, 0.06, size=(n, 1))  # how curvy each filament is
    wobble = rng.standard_normal((n, ndim))  # slowly varying (AR(1)) bending force
    vertices = np.empty((n_steps + 1, n, ndim))
    vertices[0] = rng.uniform(0, shape, size=(n, ndim))
    for t in range(n_steps):
        innovation = flatten * rng.standard_normal((n, ndim))
        wobble = 0.9 * wobble + np.sqrt(1 - 0.9**2) * innovation
        direction += bend * wobble
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        vertices[t + 1] = vertices[t] + step * direction
    return vertices, lengths


def _filaments(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Thin smooth curves (microtubule-like), line peak brightness 0.3 to 1 each."""
    ndim, step, sub = len(shape), 2.0, 4
    mean_length = 0.8 * max(shape)
    n = max(1, round(np.prod(shape) * _FILAMENT_DENSITY[ndim] / mean_length))
    vertices, lengths = _filament_vertices(shape, n, step, rng)
    brightness = rng.uniform(0.3, 1.0, size=n)
    # Densify: `sub` points per step, linearly interpolated between vertices.
    frac = (np.arange(sub) / sub)[None, :, None, None]
    points = vertices[:-1, None] + frac * np.diff(vertices, axis=0)[:, None]
    points = points.reshape(-1, n, ndim)
    arc = (np.arange(points.shape[0]) * step / sub)[:, None]
    weights = np.where(arc < lengths, brightness * step / sub, 0.0)
    # Splat onto a zero-padded canvas so the periodic blur cannot wrap around.
    pad = int(np.ceil(4 * _FILAMENT_SIGMA))
    padded = tuple(s + 2 * pad for s in shape)
    index = np.rint(points).astype(np.int64) + pad
    inside = np.all((index >= 0) & (index < padded), axis=-1) & (weights > 0)
    flat = np.ravel_multi_index(tuple(index[inside].T), padded)
    canvas = np.bincount(flat, weights=weights[inside], minlength=np.prod(padded))
    canvas = canvas.reshape(padded).astype(np.float32)
    canvas = _gaussian_filter(canvas, _FILAMENT_SIGMA, tuple(range(ndim)))
    line_peak = (np.sqrt(2 * np.pi) * _FILAMENT_SIGMA) ** (ndim - 1)  # of a unit-density line
    return canvas[tuple(slice(pad, pad + s) for s in shape)] * line_peak


def _texture(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Smooth multi-scale random field, squashed by a sigmoid into patchy clouds."""
    axes = tuple(range(len(shape)))
    field = np.zeros(shape, dtype=np.float32)
    for sigma, weight in zip(_TEXTURE_SIGMAS, _TEXTURE_WEIGHTS):
        white = rng.standard_normal(shape, dtype=np.float32)
        field += weight * _gaussian_filter(white, sigma, axes, norm="l2")  # unit std each
    field /= max(float(field.std()), 1e-12)
    return 0.5 * (1.0 + np.tanh(0.6 * (field - 0.3)))  # sigmoid(1.2 * (field - 0.3)), overflow-free


def clean_image(shape=(256, 256), kind: str = "mixed", seed: int = 0) -> np.ndarray:
    """Seeded synthetic fluorescence-like image.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    kind : {"blobs", "filaments", "texture", "mixed"}
        ``"blobs"``: Gaussian spots (3-D Gaussians in 3-D) of random sizes and
        brightness. ``"filaments"``: smooth random curves about 2-3 px wide.
        ``"texture"``: smooth band-limited random field. ``"mixed"``: a
        weighted sum of the three on a dim background (about 0.06).
    seed : int
        Seed for ``numpy.random.default_rng``; the same seed gives the same image.

    Returns
    -------
    numpy.ndarray
        float32 image with values in ``[0, 1]`` (``"mixed"``: in ``[0.06, 1]``).
        The brightest 0.1 % of pixels are saturated at 1.
    """
    shape = _check_shape(shape)
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown image kind {kind!r}; expected one of {IMAGE_KINDS}")
    rng = np.random.default_rng(seed)
    if kind == "blobs":
        return _rescale(_blobs(shape, rng))
    if kind == "filaments":
        return _rescale(_filaments(shape, rng))
    if kind == "texture":
        return _rescale(_texture(shape, rng))
    blobs, filaments, texture = _blobs(shape, rng), _filaments(shape, rng), _texture(shape, rng)
    mixed = 1.0 * _rescale(blobs) + 0.8 * _rescale(filaments) + 0.35 * _rescale(texture)
    return _rescale(mixed, low=_BACKGROUND)


# --------------------------------------------------------------------------
# Noises: each is zero-mean given the signal, E[noisy | clean] = clean
# --------------------------------------------------------------------------


def _signal(clean) -> np.ndarray:
    """``clean`` as a float32 array with at least two axes (rows, columns last)."""
    clean = np.asarray(clean, dtype=np.float32)
    if clean.ndim < 2:
        raise ValueError(f"clean must be 2-D (Y, X) or 3-D (Z, Y, X), got shape {clean.shape}")
    return clean


def _check_positive(**values: float) -> None:
    """Raise ValueError naming the first argument that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def add_stripes_noise(
    clean, peak: float = 30.0, white_sigma: float = 0.05, row_sigma: float = 0.10, blur: float = 3.0, seed: int = 0
) -> np.ndarray:
    """Shot noise + white noise + noise correlated along rows (horizontal stripes).

    ``noisy = Poisson(peak * clean) / peak + N(0, white_sigma) + row_noise``,
    where ``row_noise`` is white Gaussian noise of std ``row_sigma`` filtered
    along the last axis (X) by a Gaussian kernel of std ``blur`` pixels with
    unit L2 norm, so that it keeps std ``row_sigma``.

    Parameters
    ----------
    clean : array_like
        Signal, 2-D ``(Y, X)`` or 3-D ``(Z, Y, X)``; negative values count as 0
        for the shot noise.
    peak : float
        Photons per unit of signal; lower means stronger shot noise.
    white_sigma : float
        Std of the signal-independent white noise.
    row_sigma : float
        Std of the row-correlated noise.
    blur : float
        Correlation length of the row noise along X, in pixels (0: white).
    seed : int
        Seed for ``numpy.random.default_rng``.

    Returns
    -------
    numpy.ndarray
        float32 noisy image, same shape as ``clean``; ``E[noisy | clean] = clean``.
    """
    _check_positive(peak=peak)
    clean = _signal(clean)
    rng = np.random.default_rng(seed)
    shot = rng.poisson(peak * np.clip(clean, 0.0, None).astype(np.float64)) / peak
    white = white_sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    rows = rng.standard_normal(clean.shape, dtype=np.float32)
    rows = row_sigma * _gaussian_filter(rows, blur, axes=(-1,), norm="l2")
    return (shot + white + rows).astype(np.float32)


def _checkerboard_pattern(shape: tuple[int, ...], amplitude: float, smoothness: float, rng) -> np.ndarray:
    """``(-1)**r * a_c(r)``: independent smooth profiles per column, sign flipping every row."""
    profiles = rng.standard_normal(shape, dtype=np.float32)
    profiles = amplitude * _gaussian_filter(profiles, smoothness, axes=(-2,), norm="l2")
    sign = np.where(np.arange(shape[-2]) % 2 == 0, 1.0, -1.0).astype(np.float32)
    return profiles * sign[:, None]


def add_checkerboard_noise(
    clean,
    amplitude: float = 0.15,
    smoothness: float = 8.0,
    dark_sigma: float = 0.10,
    bright_sigma: float = 0.03,
    seed: int = 0,
) -> np.ndarray:
    """Row-alternating pattern (anti-correlated along columns) + white noise strongest in the dark.

    The pattern at row ``r``, column ``c`` is ``(-1)**r * a_c(r)``; each column
    has its own zero-mean Gaussian profile ``a_c``, independent between columns
    and smooth along ``r`` (white noise filtered by a unit-L2 Gaussian of std
    ``smoothness``, so its std is ``amplitude``). The white noise has std
    ``bright_sigma + (dark_sigma - bright_sigma) * (1 - clip(clean, 0, 1))``.

    Parameters
    ----------
    clean : array_like
        Signal, 2-D ``(Y, X)`` or 3-D ``(Z, Y, X)``; in 3-D each Z plane gets
        its own pattern (rows are axis -2).
    amplitude : float
        Std of the pattern.
    smoothness : float
        Correlation length of each column profile along the rows, in pixels.
    dark_sigma, bright_sigma : float
        Std of the white noise where ``clean`` is 0 and 1.
    seed : int
        Seed for ``numpy.random.default_rng``.

    Returns
    -------
    numpy.ndarray
        float32 noisy image, same shape as ``clean``; ``E[noisy | clean] = clean``.
    """
    clean = _signal(clean)
    rng = np.random.default_rng(seed)
    pattern = _checkerboard_pattern(clean.shape, amplitude, smoothness, rng)
    sigma = bright_sigma + (dark_sigma - bright_sigma) * (1.0 - np.clip(clean, 0.0, 1.0))
    white = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    return (clean + pattern + white).astype(np.float32)


def _ar1_along_rows(shape: tuple[int, ...], rho: float, sigma: float, rng) -> np.ndarray:
    """Stationary AR(1) process ``x_t = rho x_(t-1) + e_t`` along the last axis, marginal std ``sigma``."""
    steps = np.moveaxis(rng.standard_normal(shape), -1, 0).copy()  # contiguous per X position
    steps[1:] *= np.sqrt(1.0 - rho**2)  # innovations; steps[0] is the stationary start
    for t in range(1, steps.shape[0]):
        steps[t] += rho * steps[t - 1]
    return sigma * np.moveaxis(steps, 0, -1)


def add_camera_noise(
    clean,
    photons: float = 20.0,
    em_gain: float = 50.0,
    row_offset_sigma: float = 0.05,
    drift_rho: float = 0.95,
    drift_sigma: float = 0.05,
    read_sigma: float = 0.03,
    adu_per_electron: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """EMCCD-like noise: shot noise, EM gain, row offsets, read-out drift, read noise, ADU rounding.

    Photon counts ``n ~ Poisson(photons * clean)`` are multiplied by the EM
    register (``Gamma(shape=n, scale=em_gain)`` electrons, 0 when ``n = 0``).
    One Gaussian offset per row, an AR(1) drift along each row and white read
    noise are added, the total is converted to ADU (``adu_per_electron``) and
    rounded to integers, then divided by ``photons * em_gain * adu_per_electron``
    so that ``E[noisy | clean] = clean``. With the defaults one ADU is 0.02
    signal units: fine, and dithered by the read noise, so rounding does not
    bias the mean.

    Parameters
    ----------
    clean : array_like
        Signal, 2-D ``(Y, X)`` or 3-D ``(Z, Y, X)``; negative values count as 0
        for the shot noise.
    photons : float
        Expected photons per unit of signal.
    em_gain : float
        Mean electron multiplication of the EM register.
    row_offset_sigma : float
        Std of the per-row offsets, in signal units (one value per row; in 3-D
        per row of each plane).
    drift_rho : float
        AR(1) coefficient of the drift between neighbouring pixels of a row,
        ``|drift_rho| < 1``.
    drift_sigma : float
        Marginal std of the drift, in signal units.
    read_sigma : float
        Std of the white read noise, in signal units.
    adu_per_electron : float
        Camera conversion gain (ADU per electron after EM gain).
    seed : int
        Seed for ``numpy.random.default_rng``.

    Returns
    -------
    numpy.ndarray
        float32 noisy image in signal units, same shape as ``clean``.
    """
    _check_positive(photons=photons, em_gain=em_gain, adu_per_electron=adu_per_electron)
    if not abs(drift_rho) < 1:
        raise ValueError(f"drift_rho must satisfy |drift_rho| < 1, got {drift_rho}")
    clean = _signal(clean)
    rng = np.random.default_rng(seed)
    adu_per_unit = photons * em_gain * adu_per_electron
    counts = rng.poisson(photons * np.clip(clean, 0.0, None).astype(np.float64))
    electrons = np.zeros(clean.shape)
    lit = counts > 0
    electrons[lit] = rng.gamma(counts[lit], em_gain)
    offsets = row_offset_sigma * rng.standard_normal((*clean.shape[:-1], 1))
    drift = _ar1_along_rows(clean.shape, drift_rho, drift_sigma, rng)
    read = read_sigma * rng.standard_normal(clean.shape)
    adu = np.rint(electrons * adu_per_electron + adu_per_unit * (offsets + drift + read))
    return (adu / adu_per_unit).astype(np.float32)


_NOISES = {
    "stripes": add_stripes_noise,
    "checkerboard": add_checkerboard_noise,
    "camera": add_camera_noise,
}


def _check_noise_kind(kind: str) -> None:
    """Raise ValueError naming the valid kinds if ``kind`` is not one of them."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS}")


def add_noise(clean, kind: str, seed: int = 0, **params) -> np.ndarray:
    """Add the noise named ``kind`` to ``clean``.

    Parameters
    ----------
    clean : array_like
        Signal, 2-D ``(Y, X)`` or 3-D ``(Z, Y, X)``.
    kind : {"stripes", "checkerboard", "camera"}
        Which of `add_stripes_noise`, `add_checkerboard_noise`, `add_camera_noise`.
    seed : int
        Seed for ``numpy.random.default_rng``.
    **params
        Keyword arguments of the chosen noise function.

    Returns
    -------
    numpy.ndarray
        float32 noisy image, same shape as ``clean``.
    """
    _check_noise_kind(kind)
    return _NOISES[kind](clean, seed=seed, **params)


def make_dataset(noise: str = "stripes", n_images: int = 16, shape=(256, 256), seed: int = 0, **noise_params):
    """A stack of different ``"mixed"`` clean images and their noisy versions.

    Parameters
    ----------
    noise : {"stripes", "checkerboard", "camera"}
        Noise kind, see `add_noise`.
    n_images : int
        Number of images.
    shape : tuple of int
        Shape of each image, ``(Y, X)`` or ``(Z, Y, X)``.
    seed : int
        Seed from which every image seed and noise seed is derived.
    **noise_params
        Keyword arguments of the noise function.

    Returns
    -------
    noisy, clean : numpy.ndarray
        Two float32 arrays of shape ``(n_images, *shape)``.
    """
    _check_noise_kind(noise)
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    shape = _check_shape(shape)
    seeds = np.random.default_rng(seed).integers(0, 2**32, size=(n_images, 2))
    clean = np.empty((n_images, *shape), dtype=np.float32)
    noisy = np.empty_like(clean)
    for i, (image_seed, noise_seed) in enumerate(seeds):
        clean[i] = clean_image(shape, "mixed", int(image_seed))
        noisy[i] = add_noise(clean[i], noise, int(noise_seed), **noise_params)
    return noisy, clean


def psnr(reference, image) -> float:
    """Peak signal-to-noise ratio of ``image`` against ``reference``, in dB.

    Parameters
    ----------
    reference, image : array_like
        Arrays of the same shape.

    Returns
    -------
    float
        ``10 * log10(data_range**2 / mse)`` with ``data_range = reference.max()
        - reference.min()``, computed in float64; ``inf`` when the images are
        identical.
    """
    reference = np.asarray(reference, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    if reference.shape != image.shape:
        raise ValueError(f"shapes differ: {reference.shape} and {image.shape}")
    mse = float(np.mean((reference - image) ** 2))
    if mse == 0:
        return float("inf")
    data_range = float(reference.max() - reference.min())
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(data_range**2 / mse))


def excess_row_autocorrelation(residual, lags=(1, 2, 3)) -> np.ndarray:
    """Row minus column autocorrelation of residuals (estimate - ground truth) at the given lags.

    The row-correlated noise left in an output: a smooth (blurred) error is correlated along both
    axes alike and scores ~0, stripes score like the noise itself. Works on (..., Y, X) arrays.
    """
    r = np.asarray(residual, dtype=np.float64)
    r = r - r.mean(axis=(-2, -1), keepdims=True)
    var = (r * r).mean()
    rows = [(r[..., :, k:] * r[..., :, :-k]).mean() / var for k in lags]
    cols = [(r[..., k:, :] * r[..., :-k, :]).mean() / var for k in lags]
    return np.array(rows) - np.array(cols)
