"""Training configuration: one dataclass, filled from defaults ← preset ← YAML file ← command line."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from .errors import UserError

PRESETS = ("smoke", "cpu-quickstart", "gpu", "ablate-cpu", "ablate-gpu")


@dataclass
class TrainConfig:
    # data
    dataset: str = "fashion-mnist"
    data: str | None = None  # path; None looks in the dataset's default places
    subset: int | None = None  # train on a seeded random subset of this many images
    image_size: int | None = None  # None: the dataset's own size (28 / 32), 224 for folders
    workers: int = 2  # decoding processes for folder datasets
    max_bad_fraction: float = 0.01  # unreadable folder images are skipped and counted; more than this fraction (and more than one) stops the run; 0: any
    # augmentation
    crop_min_scale: float = 0.08  # smallest crop area fraction (the paper's 0.08)
    aug_remove: str = ""  # comma list of augment.REMOVABLE (color, grayscale, blur, solarize, flip, all-but-crop)
    # method and its ablation switches
    method: str = "byol"  # byol | simclr | simsiam
    predictor: bool = True  # False: the paper's "no predictor" ablation
    negatives_beta: float = 0.0  # weight β of the appendix's contrastive term (0: BYOL)
    temperature: float = 0.1  # α of the negatives term; SimCLR's NT-Xent temperature
    norm: str = "batch"  # batch | group-ws (GroupNorm + Weight Standardization, encoder and heads)
    # model
    backbone: str = "resnet18"
    width: float = 1.0
    stem: str = "auto"  # auto | imagenet | cifar | cifar-pool (see backbones.STEMS)
    projection_dim: int = 256
    projector_hidden_dim: int = 4096
    predictor_hidden_dim: int = 4096
    # optimisation
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.2  # base LR: the peak LR is lr × batch_size / 256
    warmup_epochs: float = 10.0
    optimizer: str = "lars"  # lars | sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 1.5e-6
    trust_coefficient: float = 1e-3
    base_tau: float = 0.996
    # runtime
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    channels_last: bool | None = None  # None: on for CPU and CUDA, where it measured faster
    sync_bn: bool = True  # under torchrun: batch norm over the global batch (the paper's cross-replica BN)
    compile: bool = False  # torch.compile the learner (minutes of compilation first; see docs/performance.md)
    seed: int = 0
    out: str = "runs/byol"
    log_every: int = 10  # steps between metrics.jsonl lines (the only host-device syncs)
    checkpoint_every: int = 500  # steps; a checkpoint is also written at every epoch end
    keep_checkpoints: int = 1  # >1: also keep this many recent checkpoints as checkpoint-step<N>.pt
    knn_every: int = 1  # epochs between kNN monitor evaluations (0: off); needs labels
    knn_bank: int = 10000  # training images in the monitor's kNN bank
    knn_test: int = 2000  # test images the monitor scores
    online_probe: bool = True  # linear classifier on the detached representation, its own optimizer
    tensorboard: bool = True
    stop_after_steps: int | None = None  # leave early with a resumable checkpoint (time-boxed jobs)
    resume: bool = False

    def validate(self) -> TrainConfig:
        from .augment import REMOVABLE
        from .backbones import ARCHITECTURES, STEMS
        from .data import DATASETS
        from .methods import METHODS
        from .norm import NORMS

        def bad(option: str, message: str):
            raise UserError(f"--{option.replace('_', '-')}: {message}")

        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                bad(field.name, f"must be a finite number, got {value}")
        if self.dataset not in DATASETS:
            bad("dataset", f"unknown dataset '{self.dataset}'; choose one of {', '.join(DATASETS)}")
        if self.backbone not in ARCHITECTURES:
            bad("backbone", f"unknown backbone '{self.backbone}'; choose one of {', '.join(ARCHITECTURES)}")
        if self.method not in METHODS:
            bad("method", f"unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
        if self.norm not in NORMS:
            bad("norm", f"unknown norm '{self.norm}'; choose one of {', '.join(NORMS)}")
        unknown_augs = [name for name in self.removed_augmentations() if name not in REMOVABLE]
        if unknown_augs:
            bad("aug_remove", f"unknown augmentation '{unknown_augs[0]}'; choose from {', '.join(REMOVABLE)}")
        if self.negatives_beta < 0:
            bad("negatives_beta", f"must not be negative, got {self.negatives_beta}")
        if self.temperature <= 0:
            bad("temperature", f"must be positive, got {self.temperature}")
        if self.method != "byol" and (not self.predictor or self.negatives_beta):
            bad("method", "--no-predictor and --negatives-beta are BYOL ablations; use them with --method byol")
        if self.stem not in STEMS:
            bad("stem", f"unknown stem '{self.stem}'; choose one of {', '.join(STEMS)}")
        if self.knn_every < 0:
            bad("knn_every", "must be 0 (off) or a number of epochs")
        for name in ("epochs", "batch_size", "log_every", "knn_bank", "knn_test", "checkpoint_every", "keep_checkpoints", "projection_dim",
                     "projector_hidden_dim", "predictor_hidden_dim"):
            if getattr(self, name) <= 0:
                bad(name, f"must be positive, got {getattr(self, name)}")
        if self.batch_size < 2:
            bad("batch_size", "must be at least 2: batch norm needs two images per batch")
        if self.width <= 0:
            bad("width", f"must be positive, got {self.width}")
        if self.lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            bad("lr", "lr, weight decay and warm-up must not be negative")
        if not 0 <= self.base_tau <= 1:
            bad("base_tau", f"must be in [0, 1], got {self.base_tau}")
        if self.optimizer not in ("lars", "sgd", "adamw"):
            bad("optimizer", f"unknown optimizer '{self.optimizer}'; choose lars, sgd or adamw")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            bad("precision", f"unknown precision '{self.precision}'; choose auto, bf16, fp16 or fp32")
        if self.image_size is not None and self.image_size < 8:
            bad("image_size", f"{self.image_size} px is too small for a ResNet (at least 8)")
        if not 0 < self.crop_min_scale <= 1:
            bad("crop_min_scale", f"must be in (0, 1], got {self.crop_min_scale}")
        if self.subset is not None and self.subset < self.batch_size:
            bad("subset", f"{self.subset} images make no full batch of {self.batch_size}")
        if not 0 <= self.max_bad_fraction <= 1:
            bad("max_bad_fraction", f"must be in [0, 1], got {self.max_bad_fraction}")
        if self.seed < 0:
            bad("seed", f"must not be negative, got {self.seed}")
        if self.stop_after_steps is not None and self.stop_after_steps <= 0:
            bad("stop_after_steps", "must be positive")
        return self

    def removed_augmentations(self) -> list[str]:
        return [name.strip() for name in self.aug_remove.split(",") if name.strip()]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value, source: str):
    """YAML gives ints for floats and strings for everything on the command line: convert, or say which key."""
    kind = FIELDS[name].type
    if value is None:
        if "None" in kind:
            return None
        raise UserError(f"{source}: '{name}' needs a value (an empty YAML key is null)")
    try:
        if "bool" in kind:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if "float" in kind:
            return float(value)
        if "int" in kind:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(value, (list, tuple)):  # YAML lists for comma-list options such as aug_remove
            return ",".join(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: '{name}' must be {kind.split(' |')[0]}, got {value!r}") from None


def merge(config: TrainConfig, values: dict, source: str) -> TrainConfig:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        shown = [k if k.isprintable() and k.strip() == k and k else repr(k) for k in unknown]
        raise UserError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(shown)}")
    updates = {k: _coerce(k, v, source) for k, v in values.items()}
    return dataclasses.replace(config, **updates)


def read_yaml(path: Path | str, source: str | None = None) -> dict:
    path = Path(path)
    source = source or str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{source}: no such file") from None
    except OSError as error:
        raise UserError(f"{source}: cannot read ({error.strerror})") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{source}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{source}: expected a mapping of option: value")
    values.pop("resolved", None)
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def preset_values(name: str) -> dict:
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}' (option --preset); choose one of {', '.join(PRESETS)}")
    resource = resources.files("byol") / "presets" / f"{name}.yaml"
    with resources.as_file(resource) as path:
        return read_yaml(path, source=f"preset {name}")


def resolve(preset: str | None = None, config_file: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """defaults ← preset ← YAML file ← overrides (None values in overrides are ignored)."""
    config = TrainConfig()
    if preset:
        config = merge(config, preset_values(preset), f"preset {preset}")
    if config_file:
        config = merge(config, read_yaml(config_file), config_file)
    if overrides:
        config = merge(config, {k: v for k, v in overrides.items() if v is not None}, "command line")
    return config.validate()


# Per-invocation switches: a saved config.yaml leaves them out so it can be reused to resume.
RUNTIME_ONLY = ("resume", "stop_after_steps")


def save_yaml(config: TrainConfig, path: Path, resolved: dict | None = None) -> None:
    """The config as YAML; `resolved` (derived values: peak LR, steps, device) goes under a
    `resolved:` key, which is for reading and ignored when the file is loaded back."""
    values = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_ONLY}
    if resolved:
        values["resolved"] = resolved
    path.write_text(yaml.safe_dump(values, sort_keys=False))
