"""One config object that rebuilds the whole model, plus the training settings and presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ORIENTATIONS = ("x", "y", "z", "none")
DIRECT_LOSSES = ("mse", "l1")
OPTIMIZERS = ("adam", "adamax")
ANNEAL_PARTS = ("all", "direct")
MERGES = ("block", "add")
NORMS = ("batch", "pixel", "none")  # nets.blocks.norm_layer


def setting(default: Any, help: str, *, kind: type | None = None, choices: tuple[str, ...] | None = None,
            count: int | str | None = None, low: float | None = None, high: float | None = None,
            step: float | None = None, flag: str | None = None, empty: str | None = None) -> Any:
    """A config field whose description and editing hints live in its metadata, in one place.

    The command line's flags and ``--help``, the Train widget's form and tooltips, and docs/settings.md
    are all made from these (see `settings`). `kind` is the value type where the default does not say it
    (None defaults, tuples); `count` is how many values a sequence takes (a number or "+"); `low`,
    `high` and `step` bound and step the form's spin boxes (the dataclass still checks the values);
    `flag` is the command line's flag where it is not the name with dashes ("" when the data set it);
    `empty` says what an empty editor means (default "automatic").
    """
    meta = {"help": help, "kind": kind, "choices": choices, "count": count, "low": low, "high": high,
            "step": step, "flag": flag, "empty": empty}
    return dataclasses.field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


@dataclass
class ModelConfig:
    """Everything needed to rebuild the networks (not the weights).

    Each field's meaning is in its metadata (`setting`): ``settings(ModelConfig)`` lists them, and
    docs/settings.md shows them as a table.
    """

    in_channels: int = setting(1, "Number of image channels; the noise of each channel is modelled "
                                  "independently.", low=1, flag="")
    spatial_dims: int = setting(2, "2 for (Y, X) images, 3 for (Z, Y, X) volumes.", low=2, high=3)
    orientation: str = setting("x", "Axis along which the noise is correlated and the AR decoder runs: x (rows), "
                                    "y (columns), z (depth, 3-D only) or none (pixel-independent noise).",
                               choices=ORIENTATIONS)
    levels: int = setting(8, "Latent levels of the ladder VAE.", low=1, high=32)
    features: int = setting(64, "Feature channels of the VAE, the signal decoder and the Direct Denoiser.",
                            low=1, high=1024)
    latent_channels: int = setting(32, "Latent channels per level (the method uses half the features).",
                                   low=1, high=1024)
    downsampling: tuple[int, ...] = setting((), "Per level, finest first: 1 halves the resolution, 0 keeps it "
                                                "(empty: worked out from the crop size).", kind=int, count="+")
    latent_kernel: int = setting(3, "Kernel of the convolutions that give the posterior and prior parameters "
                                    "and map a latent sample back to features (3 in the method; 1 is cheaper).",
                                 low=1, high=7, step=2)
    merge: str = setting("block", "Where bottom-up and top-down values meet, and in the stochastic skip: block "
                                  "(a 1x1 convolution and a gated residual block, as the method does) or add "
                                  "(a sum: faster, see benchmarks.md).", choices=MERGES)
    ar_filters: int = setting(64, "Width of the AR decoder.", low=1, high=1024)
    ar_kernel: int = setting(5, "1-D kernel size of the AR decoder's causal convolutions.", low=2, high=15)
    ar_dilations: tuple[int, ...] = setting(
        (1, 1, 2, 1, 2, 1, 1, 1), "Dilation of each AR decoder block (a causal convolution, the code, ReLU, "
                                  "a 1x1 convolution); the first block sees only earlier pixels. The default "
                                  "sees the 41 previous pixels, as the method's 4 pairs of blocks do.",
        kind=int, count="+")
    mixture_components: int = setting(3, "Gaussians per pixel in the AR decoder's noise likelihood.",
                                      low=1, high=16)
    min_scale: float = setting(1e-3, "Floor on the mixture scales in normalised units; keeps the likelihood "
                                     "finite.", low=1e-6, high=1.0, step=1e-4)
    signal_decoder_layers: int = setting(4, "Convolutions of the signal decoder.", low=1, high=16)
    signal_decoder_features: int | None = setting(None, "Width of the signal decoder's hidden layers "
                                                        "(empty: the features).", kind=int)
    direct_denoiser: bool = setting(True, "Train a Direct Denoiser U-Net alongside, for one-pass denoising.")
    direct_loss: str = setting("mse", "mse: the Direct Denoiser learns the posterior mean; l1: the pixel-wise "
                                      "median.", choices=DIRECT_LOSSES)
    direct_norm: str = setting("batch", "Normalisation in the Direct Denoiser's blocks: batch (BatchNorm; on flat "
                                        "dark regions it can shift the output, see benchmarks.md), pixel (each "
                                        "pixel's channels normalised on their own; slower on a CPU) or none (the "
                                        "same output alone or in a batch, in training or inference).", choices=NORMS)

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
        if self.direct_norm not in NORMS:
            raise ValueError(f"direct_norm must be one of {NORMS}, got {self.direct_norm!r}")
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

    Step and time budgets combine: training ends at whichever comes first. Each field's meaning is in
    its metadata (`setting`): ``settings(TrainConfig)`` lists them, and docs/settings.md shows them.
    """

    crop_size: int = setting(64, "Side of the random training crops, pixels.", low=8, high=4096)
    batch_size: int = setting(4, "Crops per step (per process when distributed).", low=1, high=1024)
    max_steps: int | None = setting(2000, "Step budget (empty: no step limit; then give minutes).", kind=int,
                                    flag="--steps")
    max_minutes: float | None = setting(None, "Time budget in minutes (empty: no time limit).", kind=float,
                                        flag="--minutes")
    optimizer: str = setting("adamax", "adamax (the reference's choice: kept the latents of smooth images alive "
                                       "where adam let them die) or adam.", choices=OPTIMIZERS)
    learning_rate: float = setting(2e-3, "Initial learning rate.", low=1e-7, high=1.0, step=1e-5)
    lr_patience: int = setting(0, "Validations without improvement before the learning rate drops (0: it "
                                  "never drops on a plateau; the rates stay constant until the final fall, "
                                  "see anneal_share).", low=0, high=1000)
    lr_factor: float = setting(0.1, "Factor applied to the learning rate on a plateau.", low=0.01, high=1.0,
                               step=0.05)
    min_lr: float = setting(1e-6, "Lowest learning rate.", low=0.0, high=1.0, step=1e-7)
    early_stopping_patience: int = setting(25, "Validations without improvement before training ends; "
                                               "with a final fall (anneal_share), the fall starts then "
                                               "instead, and training ends after it (never during a fall).",
                                           low=1, high=100000)
    val_every: int = setting(50, "Steps between validations.", low=1, high=100000)
    val_fraction: float = setting(0.1, "Share of the data held out for validation.", low=0.01, high=0.9,
                                  step=0.05)
    val_crops: int = setting(16, "Fixed validation crops (the same at every validation).", low=1, high=4096)
    grad_clip: float = setting(10.0, "Gradient norm clip.", low=0.0, high=1e6, step=1.0)
    direct_average: float = setting(0.99, "Decay of the moving average of the Direct Denoiser's weights that "
                                          "is kept (0 keeps the last weights).", low=0.0, high=0.9999, step=0.001)
    direct_every: int = setting(1, "Train the Direct Denoiser on every k-th step only (1: every step). It is "
                                   "about a third of a step's time; the other networks train on every step.",
                                low=1, high=100)
    direct_lr_floor: float = setting(1.0, "The Direct Denoiser's learning rate never falls below this share of "
                                          "the initial one.", low=0.0, high=1.0, step=0.05)
    anneal_share: float = setting(0.3, "Share of the budget (steps or minutes, whichever ends first) at its end "
                                       "over which the learning rates fall linearly to anneal_to of their "
                                       "value (0: no fall, constant rates to the end).", low=0.0, high=1.0,
                                  step=0.05)
    anneal_to: float = setting(0.05, "The rates at the end of that fall, as a share of the rates before it.",
                               low=0.0, high=1.0, step=0.01)
    anneal_parts: str = setting("all", "Which networks' rates fall at the end: all, or the Direct Denoiser's.",
                                choices=ANNEAL_PARTS)
    max_nonfinite: int = setting(20, "Non-finite losses in a row before training gives up.", low=1, high=100000)
    collapse_kl: float = setting(2e-4, "Validation KL (nats per pixel) under which the latents count as "
                                       "collapsed (0: no collapse guard).", low=0.0, high=1.0, step=1e-5)
    collapse_patience: int = setting(3, "Validations in a row under collapse_kl before the guard acts.",
                                     low=1, high=1000)
    collapse_restarts: int = setting(1, "Fresh starts with a new seed before training stops on a collapse.",
                                     low=0, high=100)
    seed: int | None = setting(0, "Random seed of weights and crops (none: a fresh one each run).", kind=int,
                               empty="a fresh seed each run")
    device: str = setting("auto", "auto (a GPU when there is one), cpu, cuda, cuda:N or mps.")
    bf16: bool = setting(False, "bf16 autocast on CUDA: less GPU memory; at batch 4 slower on an H200 "
                                "(116 against 90 ms a step, small preset), as its casts are more kernels "
                                "to launch. Worth it for big batches or models.")
    cpu_bf16: bool = setting(True, "bf16 autocast on CPUs that have bf16 instructions (AVX-512 BF16, AMX): "
                                   "1.3-1.4x the steps a minute on an AVX-512 BF16 EPYC; fp32 on other CPUs.")
    channels_last: bool = setting(True, "Train 2-D models in channels-last memory layout (same arithmetic, "
                                        "faster on CPU).")
    checkpointing: bool = setting(False, "Activation checkpointing (less GPU memory, slower).")
    threads: int | None = setting(None, "CPU threads for torch (empty: torch's default; set process-wide).",
                                  kind=int)
    max_train_gb: float = setting(1.0, "At most this much of the input (as float32, in GB) is loaded to train "
                                       "on; a larger input gives an evenly spread sample of its frames.",
                                  low=0.001, high=1024.0, step=0.5)
    flip_crops: bool = setting(False, "Flip training crops at random, only in ways that keep the noise: across "
                                      "the noise lines, and in every direction (with swaps of square crops) when "
                                      "the noise is independent from pixel to pixel.")
    clip_outliers: tuple[float, float] | None = setting(
        None, "Clip each channel to these two percentiles before training, e.g. 0.1 99.9 (empty: no clipping).",
        kind=float, count=2, empty="no clipping")

    def __post_init__(self) -> None:
        if self.crop_size < 8:
            raise ValueError("crop_size must be at least 8 pixels")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not self.max_train_gb > 0:
            raise ValueError("max_train_gb must be positive")
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("give a step budget (max_steps) or a time budget (max_minutes), or both")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be between 0 and 1")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive")
        if not 0 <= self.direct_average < 1:
            raise ValueError("direct_average must be at least 0 and below 1 (0 keeps the last weights)")
        if self.direct_every < 1:
            raise ValueError("direct_every must be at least 1 (1 trains the Direct Denoiser on every step)")
        if not 0 <= self.direct_lr_floor <= 1:
            raise ValueError("direct_lr_floor must be between 0 and 1 (a share of learning_rate)")
        if not 0 <= self.anneal_share <= 1 or not 0 <= self.anneal_to <= 1:
            raise ValueError("anneal_share and anneal_to must be between 0 and 1 (shares of the budget and "
                             "of the learning rate)")
        if self.anneal_parts not in ANNEAL_PARTS:
            raise ValueError(f"anneal_parts must be one of {ANNEAL_PARTS}, got {self.anneal_parts!r}")
        if self.lr_patience < 0:
            raise ValueError("lr_patience must be at least 0 (0: the learning rate never drops on a plateau)")
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


@dataclass(frozen=True)
class Setting:
    """One field of a config dataclass as the form, the command line and the docs see it."""

    name: str
    owner: type
    help: str
    default: Any
    kind: type                      # bool, int, float or str: the type of the value or of its items
    choices: tuple[str, ...] | None
    count: int | str | None         # None: one value; a number or "+": a sequence of that many
    nullable: bool                  # the field takes None (an empty editor)
    low: float | None
    high: float | None
    step: float | None
    flag: str                       # the command line's flag; "" where the data set the value
    empty: str                      # what an empty editor means

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    def shown_default(self) -> str:
        """The default as a person writes it: '' for None or an empty sequence."""
        value = self.default
        if value is None or value == ():
            return ""
        if isinstance(value, tuple):
            return " ".join(map(str, value))
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    def parse(self, text: str) -> Any:
        """A typed value from what a person typed ('' gives None or the empty sequence, and so does "none"
        for a setting that may be empty, so that a default such as seed 0 can be turned off); ValueError
        names it."""
        text = text.strip()
        if self.nullable and text.lower() == "none":
            return None
        try:
            if self.count is not None:
                values = tuple(self.kind(float(v)) if self.kind is int else self.kind(v)
                               for v in text.replace(",", " ").split())
                if not values:
                    return None if self.nullable else ()
                if isinstance(self.count, int) and len(values) != self.count:
                    raise ValueError
                return values
            if not text:
                if self.nullable:
                    return None
                raise ValueError
            if self.kind is bool:
                return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[text.lower()]
            if self.kind is int:
                number = float(text)
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return self.kind(text)
        except (ValueError, KeyError):
            wanted = f"{self.count} numbers" if isinstance(self.count, int) else (
                "numbers separated by spaces" if self.count else f"a {self.kind.__name__}")
            raise ValueError(f"setting '{self.label}': {text!r} is not valid ({wanted})") from None


def settings(cls: type) -> list[Setting]:
    """The settings of a config dataclass (ModelConfig, TrainConfig), in field order."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        default = f.default
        kind = meta.get("kind") or type(default)
        out.append(Setting(name=f.name, owner=cls, help=meta.get("help", f.name), default=default, kind=kind,
                           choices=meta.get("choices"), count=meta.get("count"),
                           nullable=default is None or "None" in str(f.type), low=meta.get("low"),
                           high=meta.get("high"),
                           step=meta.get("step"),
                           flag=meta.get("flag", "--" + f.name.replace("_", "-")),
                           empty=meta.get("empty", "automatic")))
    return out


def settings_markdown() -> str:
    """docs/settings.md's tables: every setting, its default and its meaning, made from the metadata."""
    lines = []
    for cls, title in ((TrainConfig, "Training (`TrainConfig`)"), (ModelConfig, "Model (`ModelConfig`)")):
        lines += [f"## {title}", "", "| setting | command line | default | meaning |", "| --- | --- | --- | --- |"]
        for s in settings(cls):
            flag = f"`{s.flag}`" if s.flag else "(from the data)"
            if s.kind is bool:
                flag = f"`{s.flag}` / `--no-{s.flag[2:]}`"
            default = s.shown_default() or "(empty)"
            meaning = s.help + (f" One of: {', '.join(s.choices)}." if s.choices else "")
            lines.append(f"| `{s.name}` | {flag} | {default} | {meaning} |")
        lines.append("")
    lines += ["## Presets", "", "A preset sets the model's size; any model setting above overrides it.", "",
              "| preset | " + " | ".join(PRESET_FIELDS) + " |", "| --- " * (len(PRESET_FIELDS) + 1) + "|"]
    for name, values in PRESETS.items():
        cells = []
        for field_name in PRESET_FIELDS:
            value = values.get(field_name, getattr(ModelConfig, field_name, ""))
            cells.append(" ".join(map(str, value)) if isinstance(value, tuple) else str(value))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


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

# What to use when the user does not choose. The `cpu` preset is the one the real-data matrix chose
# (docs/benchmarks.md). On an H200 (2026-12-04, five matrix cells, 2.5 minutes) `large` lost to `small`
# on every cell (by 0.0-3.7 dB direct) and to the reference by 1.5-3.5 dB: at batch 4 a GPU step is
# bound by kernel launches, so a big model only makes fewer updates. So the GPU takes the same default;
# a larger preset is the user's choice for long runs.
DEFAULT_PRESET_CPU = "cpu"
DEFAULT_PRESET_GPU = "cpu"


PRESET_FIELDS = ("levels", "features", "latent_channels", "ar_filters", "ar_dilations", "mixture_components")


def preset_defaults(preset: str) -> dict[str, Any]:
    """Every model setting as the preset gives it (the dataclass default where the preset is silent)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {s.name: s.default for s in settings(ModelConfig)}
    values.update(PRESETS[preset])
    return values


def model_config_from_preset(preset: str, crop_size: int = 64, **overrides: Any) -> ModelConfig:
    """Build a ModelConfig from a preset name, with the downsampling worked out for the crop size."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("downsampling") is None or len(values["downsampling"]) != values["levels"]:
        values["downsampling"] = default_downsampling(values["levels"], crop_size)
    return ModelConfig(**values)
