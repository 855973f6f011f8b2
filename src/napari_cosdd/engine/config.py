"""One config object that rebuilds the whole model, plus the training settings and presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ORIENTATIONS = ("x", "y", "z", "none")
DIRECT_LOSSES = ("mse", "l1")
OPTIMIZERS = ("adam", "adamax")
MERGES = ("block", "add")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the networks (not the weights).

    Parameters
    ----------
    in_channels : int
        Number of image channels; the noise of each channel is modelled independently.
    spatial_dims : int
        2 for (Y, X) images, 3 for (Z, Y, X) volumes.
    orientation : str
        Axis along which the noise is correlated and the AR decoder runs: "x" (rows), "y" (columns),
        "z" (depth, 3-D only) or "none" (pixel-independent noise).
    levels : int
        Number of latent levels of the ladder VAE.
    features : int
        Feature channels of the VAE, signal decoder and Direct Denoiser.
    latent_channels : int
        Latent channels per level (the reference uses features // 2).
    downsampling : tuple of int
        1 where a level halves the resolution, 0 where it keeps it; one entry per level.
    latent_kernel : int
        Kernel of the convolutions that give the posterior and prior parameters and map a latent
        sample back to features (3 in the method; 1 is cheaper).
    merge : str
        How the bottom-up and top-down values meet, and the stochastic skip: "block" (a 1x1 convolution
        and a gated residual block, as the method does) or "add" (a sum: faster, but see benchmarks.md).
    ar_filters, ar_kernel, ar_dilations : AR decoder width, 1-D kernel size and the dilation of each
        block (a causal convolution plus the code, ReLU, a 1x1 convolution); the first block sees only
        earlier pixels. The defaults see the 41 previous pixels, as the method's 4 pairs of blocks do.
    mixture_components : int
        Gaussians per pixel in the AR decoder's likelihood.
    min_scale : float
        Floor on the mixture scales in normalised units; keeps the likelihood finite.
    signal_decoder_layers : int
        Convolutions of the signal decoder.
    signal_decoder_features : int or None
        Width of the signal decoder's hidden layers (None: ``features``).
    direct_denoiser : bool
        Whether a Direct Denoiser U-Net is trained alongside.
    direct_loss : str
        "mse" (the Direct Denoiser learns the posterior mean) or "l1" (the pixel-wise median).
    """

    in_channels: int = 1
    spatial_dims: int = 2
    orientation: str = "x"
    levels: int = 8
    features: int = 64
    latent_channels: int = 32
    downsampling: tuple[int, ...] = ()
    latent_kernel: int = 3
    merge: str = "block"
    ar_filters: int = 64
    ar_kernel: int = 5
    ar_dilations: tuple[int, ...] = (1, 1, 2, 1, 2, 1, 1, 1)
    mixture_components: int = 3
    min_scale: float = 1e-3
    signal_decoder_layers: int = 4
    signal_decoder_features: int | None = None
    direct_denoiser: bool = True
    direct_loss: str = "mse"

    def __post_init__(self) -> None:
        self.downsampling = tuple(int(d) for d in self.downsampling)
        self.ar_dilations = tuple(int(d) for d in self.ar_dilations)
        if not self.downsampling:
            self.downsampling = default_downsampling(self.levels, 64)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a plain message when the settings cannot work together."""
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.orientation == "z" and self.spatial_dims != 3:
            raise ValueError("orientation 'z' needs 3-D (Z, Y, X) data; use 'x', 'y' or 'none' for 2-D")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        if self.latent_kernel < 1 or self.latent_kernel % 2 == 0:
            raise ValueError(f"latent_kernel must be a positive odd number, got {self.latent_kernel}")
        if not self.ar_dilations or min(self.ar_dilations) < 1:
            raise ValueError("ar_dilations needs at least one block, each dilation at least 1")
        if self.signal_decoder_features is not None and self.signal_decoder_features < 1:
            raise ValueError("signal_decoder_features must be at least 1 (or None for the features)")
        if self.direct_loss not in DIRECT_LOSSES:
            raise ValueError(f"direct_loss must be one of {DIRECT_LOSSES}, got {self.direct_loss!r}")
        for name in ("in_channels", "levels", "features", "latent_channels", "ar_filters",
                     "ar_kernel", "mixture_components", "signal_decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if len(self.downsampling) != self.levels:
            raise ValueError(
                f"downsampling has {len(self.downsampling)} entries but the model has {self.levels} levels"
            )
        if self.min_scale <= 0:
            raise ValueError("min_scale must be positive")

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (inference pads to it)."""
        return 2 ** sum(self.downsampling)

    @property
    def receptive_field(self) -> int:
        """How many previous pixels along the noise axis the AR decoder sees."""
        if self.orientation == "none":
            return 0
        return self.ar_kernel + (self.ar_kernel - 1) * sum(self.ar_dilations[1:])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model settings: {sorted(unknown)}")
        return cls(**values)


def default_downsampling(levels: int, crop_size: int) -> tuple[int, ...]:
    """Halve on as many levels as the crop allows; with more levels than halvings, the lowest
    levels keep full resolution, taking every other level from the bottom."""
    halvings = max(int(math.floor(math.log2(max(crop_size, 2)))) - 1, 0)
    flags = [1] * levels
    extra = max(levels - halvings, 0)
    # Keep full resolution on the lowest even-numbered levels first, then odd ones.
    for start in (0, 1):
        for i in range(start, levels, 2):
            if extra == 0:
                break
            flags[i] = 0
            extra -= 1
    return tuple(flags)


@dataclass
class TrainConfig:
    """How to train: budgets, optimisation, data sampling and device.

    Step and time budgets combine: training ends at whichever comes first (None = no limit from it).
    """

    crop_size: int = 64
    batch_size: int = 4
    max_steps: int | None = 2000
    max_minutes: float | None = None
    optimizer: str = "adamax"
    learning_rate: float = 2e-3
    lr_patience: int = 4            # validations without improvement before the lr is reduced
    lr_factor: float = 0.1
    min_lr: float = 1e-6
    early_stopping_patience: int = 25   # validations without improvement before stopping
    val_every: int = 50             # steps between validations
    val_fraction: float = 0.1
    val_crops: int = 16             # fixed validation crops (the same every validation)
    grad_clip: float = 10.0
    direct_average: float = 0.99    # decay of the averaged Direct Denoiser weights kept (0 = the last ones)
    direct_lr_floor: float = 1.0    # the Direct Denoiser's lr never falls below this share of learning_rate
    max_nonfinite: int = 20         # consecutive non-finite losses before training gives up
    collapse_kl: float = 2e-4       # validation KL (nats/pixel) under which the latents count as dead
    collapse_patience: int = 3      # validations in a row under it before the collapse guard acts
    collapse_restarts: int = 1      # fresh starts (new seed) the guard makes before it stops training
    seed: int | None = 0
    device: str = "auto"
    bf16: bool = True               # bf16 autocast on CUDA
    cpu_bf16: bool = False          # bf16 autocast on CPUs with bf16 instructions (AVX-512 BF16, AMX)
    channels_last: bool = True      # 2-D models train in channels-last layout (same arithmetic, faster on CPU)
    checkpointing: bool = False     # activation checkpointing (saves GPU memory, costs time)
    threads: int | None = None      # CPU threads for torch (None = torch's default)
    clip_outliers: tuple[float, float] | None = None   # percentiles, e.g. (0.1, 99.9)

    def __post_init__(self) -> None:
        if self.crop_size < 8:
            raise ValueError("crop_size must be at least 8 pixels")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("give a step budget (max_steps) or a time budget (max_minutes), or both")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be between 0 and 1")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive")
        if not 0 <= self.direct_average < 1:
            raise ValueError("direct_average must be at least 0 and below 1 (0 keeps the last weights)")
        if not 0 <= self.direct_lr_floor <= 1:
            raise ValueError("direct_lr_floor must be between 0 and 1 (a share of learning_rate)")
        if self.collapse_kl < 0 or self.collapse_patience < 1 or self.collapse_restarts < 0:
            raise ValueError("collapse_kl must be >= 0, collapse_patience >= 1 and collapse_restarts >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# One line of help per setting, for the command line's flags and the widgets' tooltips.
FIELD_HELP = {
    "crop_size": "side of the random training crops, pixels",
    "batch_size": "crops per step (per process when distributed)",
    "optimizer": "adamax (the reference's choice, the default) or adam",
    "learning_rate": "initial learning rate",
    "lr_patience": "validations without improvement before the learning rate drops",
    "lr_factor": "factor applied to the learning rate on a plateau",
    "min_lr": "lowest learning rate",
    "early_stopping_patience": "validations without improvement before training ends",
    "val_every": "steps between validations",
    "val_fraction": "share of the data held out for validation",
    "val_crops": "number of fixed validation crops",
    "grad_clip": "gradient norm clip",
    "direct_average": "decay of the moving average of the Direct Denoiser's weights (0 keeps the last)",
    "direct_lr_floor": "the Direct Denoiser's learning rate stays above this share of the initial one",
    "max_nonfinite": "non-finite losses in a row before training gives up",
    "collapse_kl": "validation KL (nats/pixel) under which the latents count as collapsed (0: no guard)",
    "collapse_patience": "validations in a row under collapse_kl before the guard acts",
    "collapse_restarts": "fresh starts with a new seed before training stops on a collapse",
    "bf16": "bf16 autocast on CUDA",
    "cpu_bf16": "bf16 autocast on CPUs that have bf16 instructions (AVX-512 BF16, AMX); fp32 on others",
    "channels_last": "train 2-D models in channels-last memory layout (same arithmetic, faster on CPU)",
    "checkpointing": "activation checkpointing (less GPU memory, slower)",
    "threads": "CPU threads for torch",
    "clip_outliers": "clip the input to these two percentiles, e.g. 0.1 99.9",
    "levels": "latent levels of the ladder VAE",
    "features": "feature channels of the networks",
    "latent_channels": "latent channels per level",
    "downsampling": "per level: 1 halves the resolution, 0 keeps it",
    "ar_filters": "AR decoder width",
    "ar_kernel": "AR decoder 1-D kernel size",
    "ar_dilations": "AR decoder dilations, one per block",
    "latent_kernel": "kernel of the latent (posterior, prior, sample) convolutions",
    "merge": "block (as the method) or add (faster) where bottom-up and top-down meet",
    "signal_decoder_features": "width of the signal decoder (default: features)",
    "mixture_components": "Gaussians per pixel in the noise likelihood",
    "min_scale": "floor on the mixture scales (normalised units)",
    "signal_decoder_layers": "convolutions of the signal decoder",
    "direct_denoiser": "train the Direct Denoiser U-Net alongside",
    "direct_loss": "mse: the Direct Denoiser gives the posterior mean; l1: the median",
}
# Settings that take one of a few words: the command line and the widgets offer exactly these.
FIELD_CHOICES = {"direct_loss": DIRECT_LOSSES, "optimizer": OPTIMIZERS, "merge": MERGES}

# Presets name the network size; every field can still be overridden.
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds per run on a CPU: for tests and demos.
    "tiny": dict(levels=3, features=16, latent_channels=8, ar_filters=16, ar_dilations=(1, 1, 2),
                 mixture_components=3, downsampling=(0, 1, 1)),
    # The CPU default: 4 levels at half the small model's width. With 64-px crops every level halves
    # the resolution, so no latent level runs at full resolution: a step costs a third less than with
    # 6 levels, and in 5 minutes on a 2-core CPU it denoised 1.5 dB better (benchmarks.md). With 3
    # levels the latents collapsed.
    "cpu": dict(levels=4, features=32, latent_channels=16, ar_filters=32, mixture_components=3),
    # The reference's small model: 6 levels, 64 features.
    "small": dict(levels=6, features=64, latent_channels=32, ar_filters=64, mixture_components=3),
    # The reference's default size.
    "default": dict(levels=8, features=64, latent_channels=32, ar_filters=64, mixture_components=3),
    # The paper's large model: 14 levels, 128 features.
    "large": dict(levels=14, features=128, latent_channels=64, ar_filters=64, mixture_components=4),
}

# What to use when the user does not choose: CPU time is scarce, a GPU is not.
DEFAULT_PRESET_CPU = "cpu"
DEFAULT_PRESET_GPU = "large"


def model_config_from_preset(preset: str, crop_size: int = 64, **overrides: Any) -> ModelConfig:
    """Build a ModelConfig from a preset name, with the downsampling worked out for the crop size."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("downsampling") is None or len(values["downsampling"]) != values["levels"]:
        values["downsampling"] = default_downsampling(values["levels"], crop_size)
    return ModelConfig(**values)
