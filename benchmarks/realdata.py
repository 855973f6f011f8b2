"""The real-data matrix: clean images that install offline from wheels, crossed with simulated noises.

Every cell is 16 frames of 256x256 (fewer pixels where an image is small), stored the way users' data
come: uint16 counts with a camera offset, not pre-normalised. The noise is zero-mean given the signal,
so the clean frames in the same counts are the ground truth. Frames are crops of the clean image, turned
and flipped before the noise is added (turning a noisy frame would turn its noise too).

Images (the clean source, and what it stands for):

- ``nuclei2d``: stardist 0.9.2's ``img2d.tif``, fluorescent nuclei on a dark background;
- ``nuclei3d``: stardist's ``img3d.tif``, its 31 planes upsampled 5x: dim, smooth and dense;
- ``cell``: scikit-image's ``cell.png``, a dense transmitted-light cell;
- ``hubble``: scikit-image's ``hubble_deep_field.jpg`` in grey: sparse bright points on a dark field;
- ``moon``: scikit-image's ``moon.png``: smooth, dense, no background;
- ``synth-sparse``, ``synth-smooth``: the project's generator, spots on a dark field and a smooth texture.

Held-out images (``HELD_OUT``): never used to choose a default, so they show how the defaults carry
to images they were not tuned on (the project is judged on such images too). They are not part of the
28-cell matrix and are tabulated apart:

- ``ihc``: scikit-image's ``ihc.png`` in grey, immunohistochemistry of dense tissue (bright field);
- ``retina``: scikit-image's ``retina.jpg`` in grey, a fundus photograph: vessels on a smooth field,
  with a dark surround.

Noises (orientation the user should find):

- ``x``: shot noise + white noise + Gaussian noise correlated along rows (stripes);
- ``y``: the same with the correlated part along columns;
- ``camera``: EMCCD-like: Poisson photons, EM gain, per-row offsets, read-out drift, read noise, ADU;
- ``none``: pixel-independent Poisson-Gaussian.

Install the sources with ``pip install scikit-image`` and ``pip install --no-deps stardist==0.9.2``
(only its data files are read; stardist itself is never imported).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass

import numpy as np

from napari_cosdd import synthetic as S

IMAGES = ("nuclei2d", "nuclei3d", "cell", "hubble", "moon", "synth-sparse", "synth-smooth")
HELD_OUT = ("ihc", "retina")
NOISES = ("x", "y", "camera", "none")
# The orientation each noise is correlated along (what the autocorrelation should suggest).
TRUE_ORIENTATION = {"x": "x", "y": "y", "camera": "x", "none": "none"}

FRAMES = 16
EVAL_FRAMES = 6          # the first frames are scored; all 16 are trained on (as a user would)
SIZE = 256
OFFSET = 100.0           # camera offset, ADU
GAIN = {"x": 100.0, "y": 100.0, "none": 100.0, "camera": 50.0}   # ADU per unit of signal (3.3 and 1.7 ADU per photon)
PEAK = 30.0              # photons per unit of signal for the shot noise of x, y and none


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(
            f"the clean images need the {name} package's data files: "
            f"pip install {'--no-deps stardist==0.9.2' if name == 'stardist' else 'scikit-image'}")
    return os.path.dirname(spec.origin)


def source_image(name: str) -> np.ndarray:
    """The clean source as float32 in [0, 1] (0 = its darkest pixel, 1 = its 99.9th percentile)."""
    if name.startswith("synth-"):
        kind = {"synth-sparse": "blobs", "synth-smooth": "texture"}[name]
        img = S.clean_image((512, 512), kind=kind, seed=3)
        if name == "synth-sparse":
            img = 0.03 + img  # a dim, flat background under the spots, as a real camera has
    elif name in ("nuclei2d", "nuclei3d"):
        import tifffile

        path = os.path.join(_package_dir("stardist"), "data", "images",
                            "img2d.tif" if name == "nuclei2d" else "img3d.tif")
        img = tifffile.imread(path).astype(np.float32)
        if name == "nuclei3d":
            from scipy import ndimage

            img = ndimage.zoom(img, (1, 5, 5), order=3)
    else:
        from skimage import io

        filename = {"cell": "cell.png", "hubble": "hubble_deep_field.jpg", "moon": "moon.png",
                    "ihc": "ihc.png", "retina": "retina.jpg"}[name]
        img = io.imread(os.path.join(_package_dir("skimage"), "data", filename)).astype(np.float32)
        if img.ndim == 3:
            img = img[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = np.asarray(img, dtype=np.float32)
    lo, hi = float(img.min()), float(np.percentile(img, 99.9))
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def clean_frames(name: str, n: int = FRAMES, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """n frames (n, s, s) in [0, 1]: random crops, each turned and flipped one of 8 ways."""
    img = source_image(name)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        stack = img[rng.integers(img.shape[0])] if img.ndim == 3 else img
        s = min(size, *stack.shape)
        y = int(rng.integers(0, stack.shape[0] - s + 1))
        x = int(rng.integers(0, stack.shape[1] - s + 1))
        crop = stack[y:y + s, x:x + s]
        crop = np.rot90(crop, i % 4)
        frames.append(np.ascontiguousarray(crop[:, ::-1] if (i // 4) % 2 else crop))
    return np.stack(frames).astype(np.float32)


def noisy_signal(clean: np.ndarray, noise: str, seed: int = 0) -> np.ndarray:
    """The noisy frames in signal units, E[noisy | clean] = clean."""
    out = np.empty_like(clean)
    for i, frame in enumerate(clean):
        s = seed * 1000 + i
        if noise == "x":
            out[i] = S.add_stripes_noise(frame, peak=PEAK, white_sigma=0.05, row_sigma=0.10, blur=3.0, seed=s)
        elif noise == "y":
            out[i] = S.add_stripes_noise(frame.T, peak=PEAK, white_sigma=0.05, row_sigma=0.10, blur=3.0, seed=s).T
        elif noise == "camera":
            out[i] = S.add_camera_noise(frame, seed=s)
        elif noise == "none":
            rng = np.random.default_rng(s)
            out[i] = rng.poisson(PEAK * frame.astype(np.float64)) / PEAK + 0.05 * rng.standard_normal(frame.shape)
        else:
            raise ValueError(f"unknown noise {noise!r}; choose one of {NOISES}")
    return out


@dataclass
class Cell:
    image: str
    noise: str
    noisy: np.ndarray      # (16, Y, X) uint16 counts with the offset
    clean: np.ndarray      # (16, Y, X) float32, the same counts without noise

    @property
    def name(self) -> str:
        return f"{self.image}_{self.noise}"


def make_cell(image: str, noise: str, seed: int = 0) -> Cell:
    clean = clean_frames(image, seed=seed)
    gain = GAIN[noise]
    noisy = OFFSET + gain * noisy_signal(clean, noise, seed)
    noisy = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
    return Cell(image, noise, noisy, (OFFSET + gain * clean).astype(np.float32))


def device_name(device: str) -> str:
    """The device a result was measured on, as its file records it ("cuda:0: NVIDIA H200", "cpu")."""
    if device.startswith("cuda"):
        import torch

        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    return device


def psnr_frames(clean: np.ndarray, estimate: np.ndarray) -> float:
    """Mean over frames of the PSNR, each with its clean frame's range."""
    return float(np.mean([S.psnr(c, e) for c, e in zip(clean, estimate)]))


# ---------------------------------------------------------------- stored results

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_cells(names: list[str]) -> list[tuple[str, str]]:
    """'IMAGE_NOISE' names (or 'all', the matrix without the held-out images) -> (image, noise) pairs, checked."""
    if names == ["all"]:
        return [(i, n) for i in IMAGES for n in NOISES]
    cells = []
    for name in names:
        image, _, noise = name.rpartition("_")
        if image not in IMAGES + HELD_OUT or noise not in NOISES:
            raise SystemExit(f"unknown cell {name!r}: use IMAGE_NOISE with IMAGE in {IMAGES + HELD_OUT} "
                             f"and NOISE in {NOISES}")
        cells.append((image, noise))
    return cells


def _result_path(method: str, image: str, noise: str) -> str:
    return os.path.join(RESULTS, method, f"{image}_{noise}.json")


def has_result(method: str, image: str, noise: str) -> bool:
    return os.path.exists(_result_path(method, image, noise))


def commit() -> str:
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "../src"], cwd=here, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+uncommitted engine changes" if dirty else "")


# Read once, when the benchmark process starts and imports this module: the code a run uses is the code
# loaded then, whatever is edited or committed while its cells run.
COMMIT_AT_START = commit()


def machine_name(platform) -> str:
    """The processor's model name as well as its cores: step counts differ about 2.4x between the machines
    sessions get, so a cell pair is only comparable when both sides name the same one."""
    model, vector = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
        model = names[0] if names else model
        flags = set(re.findall(r"\b(avx512f|avx512_bf16|avx2)\b", info))
        vector = ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else ""
        vector += " with bf16" if "avx512_bf16" in flags else ""
    except OSError:
        pass
    return f"{model}{vector}, {os.cpu_count()} cores"


def write_result(method: str, cell: Cell, result: dict) -> str:
    """Store one cell's figures with the commit, date and machine that made them."""
    import json
    import platform
    import time

    import torch

    path = _result_path(method, cell.image, cell.noise)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {"method": method, "image": cell.image, "noise": cell.noise, "commit": COMMIT_AT_START,
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_name(platform),
              "torch": torch.__version__, **result}
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    return path


def load_results(method: str) -> dict[tuple[str, str], dict]:
    import glob
    import json

    out = {}
    for path in sorted(glob.glob(os.path.join(RESULTS, method, "*.json"))):
        with open(path) as f:
            record = json.load(f)
        out[(record["image"], record["noise"])] = record
    return out


# ---------------------------------------------------------------- the docs

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks.md")


def write_into_docs(text: str, begin: str, end: str) -> None:
    """Replace what stands between the markers ``begin`` and ``end`` in docs/benchmarks.md with text."""
    with open(DOCS) as f:
        doc = f.read()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{DOCS} has no '{begin}' ... '{end}' markers; add them where the table belongs")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(DOCS, "w") as f:
        f.write(head + begin + "\n" + text + "\n" + end + tail)
    print(f"written into {os.path.relpath(DOCS)}")
