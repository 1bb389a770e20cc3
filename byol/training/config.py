"""Training configuration: one dataclass, filled from defaults ← preset ← YAML file ← command line.

Every option is written once, as a field below: its default, its help, its choices (from the
registries of the modules that build them), its check, and whether changing it changes what a run
learns (`trajectory`). The command-line parser (`cli.py`), the resume warning and the checks here are
all derived from these fields; adding an option is one `option(...)` line plus its use.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import yaml

from byol.data.augment import REMOVABLE
from byol.data.datasets import DATASETS
from byol.methods import LEARNER_OPTIONS, METHODS, method_defaults, model_defaults
from byol.models.backbones import ARCHITECTURES, STEMS, backbone_problem
from byol.models.norm import NORMS
from byol.runtime.device import PRECISIONS
from byol.runtime.errors import UserError
from byol.training.optim import OPTIMIZERS

PRESETS = ("smoke", "cpu-quickstart", "gpu", "ablate-cpu", "ablate-gpu")


# ---------------------------------------------------------------- checks: value → what is wrong, or None


def positive(value) -> str | None:
    return None if value > 0 else f"must be positive, got {value}"


def non_negative(value) -> str | None:
    return None if value >= 0 else f"must not be negative, got {value}"


def unit_interval(value) -> str | None:
    return None if 0 <= value <= 1 else f"must be in [0, 1], got {value}"


def crop_fraction(value) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


def batch_of_two(value) -> str | None:
    return None if value >= 2 else "must be at least 2: batch norm needs two images per batch"


def resnet_size(value) -> str | None:
    return None if value >= 8 else f"{value} px is too small for a ResNet (at least 8)"


def epochs_or_off(value) -> str | None:
    return None if value >= 0 else "must be 0 (off) or a number of epochs"


def crop_range(value) -> str | None:
    low, high = value
    return None if 0 < low <= high <= 1 else f"must be 0 < MIN ≤ MAX ≤ 1, got {low} {high}"


def augmentation_names(value) -> str | None:
    unknown = [name for name in split_list(value) if name not in REMOVABLE]
    return f"unknown augmentation '{unknown[0]}'; choose from {', '.join(REMOVABLE)}" if unknown else None


def device_name(value) -> str | None:
    if value == "auto":
        return None
    try:
        torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        return f"unknown device '{value}'; choose auto, cpu, cuda, cuda:N or mps"
    return None


def option(
    default,
    help: str,
    *,
    choices=None,
    check=None,
    trajectory: bool = True,
    saved: bool = True,
    aliases: tuple[str, ...] = (),
    metavar: str | None = None,
):
    """A config field with what the CLI and the checks need to know about it.

    trajectory: a changed value changes what the run learns (a resume with it changed is warned about).
    saved: written to config.yaml (False for per-invocation switches such as --resume).
    """
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "choices": tuple(choices) if choices is not None else None,
            "check": check,
            "trajectory": trajectory,
            "saved": saved,
            "aliases": aliases,
            "metavar": metavar,
        },
    )


@dataclass
class TrainConfig:
    # data
    dataset: str = option("fashion-mnist", "dataset to train on", choices=DATASETS)
    data: str | None = option(
        None, "dataset location (default: the dataset's usual places)", metavar="PATH", trajectory=False
    )
    subset: int | None = option(
        None, "train on a seeded random subset of N images (default: all)", check=positive, metavar="N"
    )
    image_size: int | None = option(
        None,
        "training resolution in pixels (default: the dataset's own; 224 for folders)",
        check=resnet_size,
        metavar="PX",
    )
    workers: int | None = option(
        None,
        "image-decoding processes for folder images (default: one per available core)",
        check=non_negative,
        trajectory=False,
        metavar="N",
    )
    cache_decoded: str | None = option(
        None,
        "keep folder images decoded at the load size in a memory-mapped file in "
        "DIR, written as the first epoch decodes them and read after (docs/data.md) (default: off)",
        trajectory=False,
        metavar="DIR",
    )
    decode: str = option(
        "cpu",
        "folder images: decoded on the cpu (PIL, in --workers processes), or JPEGs on the gpu "
        "(nvjpeg, a batch at a time; other files on the CPU) (docs/data.md)",
        choices=("cpu", "gpu"),
        trajectory=False,
    )
    max_bad_fraction: float = option(
        0.01,
        "unreadable folder images are skipped and counted; more than this "
        "fraction of the dataset (and more than one) stops the run; 0: any",
        check=unit_interval,
        trajectory=False,
        metavar="F",
    )
    # augmentation
    crop_min_scale: float = option(0.08, "smallest area fraction of a random crop", check=crop_fraction, metavar="S")
    aug_remove: str = option(
        "",
        f"augmentations to drop, comma-separated: {', '.join(REMOVABLE)} (ablations)",
        check=augmentation_names,
        metavar="LIST",
    )
    local_crops: int = option(
        0, "multi-crop: small crops per image beside the two global ones (swav, dino)", check=non_negative, metavar="N"
    )
    local_size: int | None = option(
        None, "side of the local crops (default: 3/7 of the image size, 96 for 224)", check=resnet_size, metavar="PX"
    )
    local_crop_scale: tuple[float, float] = option(
        (0.05, 0.14), "area fraction range of the local crops", check=crop_range, metavar=("MIN", "MAX")
    )
    # method and its ablation switches; a method's own defaults come from its recipe (methods/__init__.py)
    method: str = option(
        "byol",
        "byol, or a method of the comparison on the same backbone, data and evaluation "
        "(each starts from its own recipe's values, named in the options they change: docs/methods.md)",
        choices=METHODS,
    )
    predictor: bool = option(True, "--no-predictor: the paper's ablation without the predictor (collapses)")
    negatives_beta: float = option(
        0.0, "weight β of the appendix's contrastive term (0: BYOL)", check=non_negative, metavar="B"
    )
    negatives_temperature: float = option(
        0.1, "temperature α of the contrastive term --negatives-beta adds (byol)", check=positive, metavar="A"
    )
    temperature: float = option(
        0.1, "softmax temperature of the loss: simclr's and mocov2's InfoNCE, swav's swapped prediction", check=positive
    )
    norm: str = option(
        "batch", "batch norm, or group-ws: GroupNorm + Weight Standardization in encoder and heads", choices=NORMS
    )
    queue_size: int = option(
        0,
        "mocov2: negatives kept from earlier batches; swav: embeddings kept for the codes",
        check=non_negative,
        metavar="N",
    )
    queue_start_epoch: float = option(0.0, "swav: the epoch the queue starts", check=non_negative, metavar="EPOCH")
    prototypes: int = option(3000, "swav: prototypes; dino: the head's output size", check=positive, metavar="K")
    sinkhorn_epsilon: float = option(0.05, "swav: Sinkhorn's entropy ε", check=positive)
    sinkhorn_iterations: int = option(3, "swav: Sinkhorn-Knopp iterations", check=positive)
    freeze_head_epochs: float = option(
        0.0, "swav: prototypes, dino: the head's last layer, frozen this long", check=non_negative, metavar="EPOCHS"
    )
    student_temperature: float = option(0.1, "dino: the student's softmax temperature", check=positive)
    teacher_temperature: float = option(0.04, "dino: the teacher's temperature after its warm-up", check=positive)
    teacher_temperature_start: float = option(0.04, "dino: the teacher's temperature at epoch 0", check=positive)
    teacher_temperature_epochs: float = option(
        0.0, "dino: epochs of the teacher temperature's warm-up", check=non_negative, metavar="EPOCHS"
    )
    center_momentum: float = option(0.9, "dino: momentum of the teacher-output centre", check=unit_interval)
    clip_grad: float = option(0.0, "clip each parameter's gradient to this norm (0: off)", check=non_negative)
    lambda_offdiag: float = option(0.0051, "barlowtwins: weight λ of the off-diagonal term", check=non_negative)
    sim_weight: float = option(25.0, "vicreg: weight of the invariance term", check=non_negative)
    var_weight: float = option(25.0, "vicreg: weight of the variance term", check=non_negative)
    cov_weight: float = option(1.0, "vicreg: weight of the covariance term", check=non_negative)
    # model
    backbone: str = option(
        "resnet18",
        f"encoder: {', '.join(ARCHITECTURES)} (with --width, --stem), "
        "torchvision:NAME (any torchvision classification model) or timm:NAME (any timm model; "
        "pip install 'byol[timm]')",
        check=backbone_problem,
        metavar="NAME",
    )
    width: float = option(1.0, "channel-width multiplier of the ResNet (0.25 = quarter width)", check=positive)
    stem: str = option(
        "auto",
        "ResNet stem: auto = cifar (3×3/1) up to 64 px, imagenet (7×7/2 + pool) above; "
        "cifar-pool adds a 2×2 max-pool, 4× cheaper",
        choices=STEMS,
    )
    projection_dim: int = option(
        256,
        "size of the projection (and of byol's and simsiam's prediction; swav: before the prototypes)",
        check=positive,
    )
    bottleneck_dim: int = option(256, "dino: the head's bottleneck, before its prototype layer", check=positive)
    projector_hidden_dim: int = option(4096, "hidden size of the projector", check=positive)
    predictor_hidden_dim: int = option(4096, "hidden size of the predictor", check=positive)
    # optimisation
    epochs: int = option(100, "passes over the training set", check=positive)
    batch_size: int = option(
        256, "global images per step (the LR scales with it: lr × batch / 256)", check=batch_of_two
    )
    lr: float = option(0.2, "base learning rate; the peak is lr × batch_size / 256", check=non_negative)
    warmup_epochs: float = option(10.0, "linear warm-up before the cosine decay", check=non_negative)
    optimizer: str = option("lars", "lars (the paper's), momentum sgd, or adamw", choices=OPTIMIZERS)
    momentum: float = option(0.9, "momentum (LARS, SGD); AdamW's β₁")
    weight_decay: float = option(1.5e-6, "never applied to biases and norm parameters", check=non_negative)
    final_weight_decay: float | None = option(
        None,
        "cosine weight-decay schedule to this value (dino's ViT recipe) (default: constant)",
        check=non_negative,
        metavar="X",
    )
    trust_coefficient: float = option(1e-3, "LARS η")
    clip_lr: bool = option(False, "LARS: no layer's effective LR above the global one (solo-learn's variant)")
    lr_floor: float = option(
        0.0,
        "the cosine ends at this fraction of the peak LR",
        check=unit_interval,
        metavar="F",
    )
    bias_lr_multiplier: float = option(
        1.0, "LR multiplier of biases and norm parameters", check=non_negative, metavar="X"
    )
    base_tau: float = option(
        0.996,
        "τ_base of the target EMA schedule; 0 = stop-gradient online network, 1 = fixed random target",
        check=unit_interval,
        aliases=("--tau-base",),
    )
    final_tau: float = option(
        1.0, "τ at the end of the run (BYOL's 1; mocov2's official recipe is constant)", check=unit_interval
    )
    # runtime
    device: str = option(
        "auto", "auto, cpu, cuda, cuda:N or mps", check=device_name, trajectory=False, metavar="DEVICE"
    )
    precision: str = option("auto", "number format of the step (auto: docs/performance.md)", choices=PRECISIONS)
    channels_last: bool | None = option(
        None, "channels-last memory format (default: on for CPU and CUDA)", trajectory=False
    )
    sync_bn: bool = option(True, "under torchrun, batch norm over the global batch (--no-sync-bn: per process)")
    compile: bool = option(False, "torch.compile the learner (minutes of compilation first)", trajectory=False)
    cuda_graphs: bool = option(
        False,
        "replay augmentation, forward and backward as one CUDA graph (one CUDA process; docs/performance.md)",
        trajectory=False,
    )
    seed: int = option(0, "seed of weights, data order and augmentations", check=non_negative)
    out: str = option("runs/byol", "run folder (checkpoint, config, metrics, weights)", metavar="DIR", trajectory=False)
    log_every: int = option(
        10,
        "steps between metrics.jsonl lines (each one a host-device sync)",
        check=positive,
        trajectory=False,
        metavar="STEPS",
    )
    checkpoint_every: int = option(500, "steps between checkpoints", check=positive, trajectory=False, metavar="STEPS")
    checkpoint_epochs: int = option(
        1,
        "epochs between end-of-epoch checkpoints (0: only every --checkpoint-every steps)",
        check=non_negative,
        trajectory=False,
        metavar="EPOCHS",
    )
    keep_checkpoints: int = option(
        1,
        "also keep the K most recent checkpoints as checkpoint-step<N>.pt",
        check=positive,
        trajectory=False,
        metavar="K",
    )
    knn_every: int = option(
        1,
        "epochs between kNN monitor evaluations (0: off); needs labels",
        check=epochs_or_off,
        trajectory=False,
        metavar="EPOCHS",
    )
    knn_bank: int = option(
        10000, "training images in the kNN monitor's bank", check=positive, trajectory=False, metavar="N"
    )
    knn_test: int = option(2000, "test images the kNN monitor scores", check=positive, trajectory=False, metavar="N")
    online_probe: bool = option(
        True, "linear classifier on the detached representation, its own optimizer", trajectory=False
    )
    tensorboard: bool = option(True, "TensorBoard scalars in DIR/tensorboard", trajectory=False)
    stop_after_steps: int | None = option(
        None,
        "stop at step N with a resumable checkpoint (time-boxed jobs) (default: run to the end)",
        check=positive,
        trajectory=False,
        saved=False,
        metavar="N",
    )
    resume: bool = option(False, "continue from DIR/checkpoint.pt if there is one", trajectory=False, saved=False)

    def validate(self) -> TrainConfig:
        """Every field's own checks, then the few that involve two fields. Raises UserError naming the option."""
        for field in dataclasses.fields(self):
            problem = field_problem(field, getattr(self, field.name))
            if problem:
                raise UserError(f"{flag(field.name)}: {problem}")
        problem = backbone_problem(self.backbone, self.width, self.stem, self.norm)
        if problem:
            raise UserError(f"--backbone {self.backbone}: {problem}")
        problem = foreign_ablation(self) or METHODS[self.method].config_problem(self)
        if problem:
            raise UserError(problem)
        if self.cuda_graphs and self.device.split(":")[0] in ("cpu", "mps"):
            raise UserError(f"--cuda-graphs: CUDA graphs need a CUDA device, not --device {self.device}")
        problem = self.decode == "gpu" and gpu_decode_problem(self)
        if problem:
            raise UserError(f"--decode gpu: {problem}")
        if self.subset is not None and self.subset < self.batch_size:
            raise UserError(f"--subset: {self.subset} images make no full batch of {self.batch_size}")
        return self

    def removed_augmentations(self) -> list[str]:
        return split_list(self.aug_remove)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TRAJECTORY_KEYS = tuple(name for name, f in FIELDS.items() if f.metadata["trajectory"])
RUNTIME_ONLY = tuple(name for name, f in FIELDS.items() if not f.metadata["saved"])


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def split_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def gpu_decode_problem(config: TrainConfig) -> str | None:
    """Why --decode gpu cannot apply to this config, or None (the device may still turn out not to be CUDA:
    `auto` is resolved when the run starts, which checks again)."""
    if config.dataset != "folder":
        return f"only folder images are decoded; --dataset {config.dataset} is read into memory once"
    if config.device.split(":")[0] in ("cpu", "mps"):
        return f"nvjpeg needs a CUDA device, not --device {config.device}"
    if config.cache_decoded:
        return "--cache-decoded keeps images the CPU decoded; the GPU decodes each epoch afresh: choose one"
    return None


def foreign_ablation(config: TrainConfig) -> str | None:
    """Another method's ablation switch (BYOL's --no-predictor, ...) moved from its default, or None."""
    takes = set(model_defaults(config.method))
    for owner, cls in METHODS.items():
        for name in cls.ablations:
            value = getattr(config, name)
            if name not in takes and value != FIELDS[name].default:
                shown = f"--no-{name.replace('_', '-')}" if value is False else f"{flag(name)} {value}"
                return f"{shown}: --method {config.method} does not take it (a {owner} ablation)"
    return None


def field_problem(field: dataclasses.Field, value) -> str | None:
    """What is wrong with `value` for this field (not finite, not a choice, its check), or None."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    choices = field.metadata["choices"]
    if choices is not None and value not in choices:
        return f"unknown {field.name.replace('_', ' ')} '{value}'; choose one of {', '.join(choices)}"
    check = field.metadata["check"]
    return check(value) if check else None


def check_options(values: dict) -> None:
    """The fields' own checks on options given outside a TrainConfig (e.g. `byol bench`'s)."""
    for name, value in values.items():
        problem = field_problem(FIELDS[name], value)
        if problem:
            raise UserError(f"{flag(name)}: {problem}")


def read_value(name: str, value):
    """Option `name`'s value from YAML (ints for floats, lists for pairs) or from the command line's text: the
    one reader of both. Raises ValueError saying what is wrong."""
    kind = FIELDS[name].type
    if value is None:
        if "None" in kind:
            return None
        raise ValueError("needs a value (an empty YAML key is null)")
    expected = f"must be {kind.split(' |')[0]}, got {value!r}"
    try:
        if kind.startswith("tuple"):  # two numbers: a YAML list or the command line's two values
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            low, high = (float(v) for v in value)
            return (low, high)
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
            number = float(value) if isinstance(value, str) and not value.strip().lstrip("+-").isdigit() else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError(value)
            return int(number)
        if isinstance(value, (list, tuple)):  # YAML lists for comma-list options such as aug_remove
            return ",".join(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(expected) from None


def command_line_reader(name: str):
    """argparse's `type` for option `name`: `read_value`, with its complaint as argparse's one-line error."""

    def read(text: str):
        try:
            return read_value(name, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return read


def with_new_names(values: dict, method, source: str | None = None) -> dict:
    """`values` with the method's renamed options (`renamed_options`) under their names now, when the layer
    names that method itself (a preset is shared by every method, so its keys keep their meaning). With a
    `source`, each rename read is announced in one line on stderr."""
    renames = METHODS[method].renamed_options if isinstance(method, str) and method in METHODS else {}
    values = dict(values)
    for old, new in renames.items():
        if old in values and new not in values:
            values[new] = values.pop(old)
            if source:
                print(
                    f"byol: warning: {source}: '{old}' of --method {method} is now '{new}' ({flag(new)}); read as that",
                    file=sys.stderr,
                )
    return values


def merge(config: TrainConfig, values: dict, source: str) -> TrainConfig:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        shown = [k if k.isprintable() and k.strip() == k and k else repr(k) for k in unknown]
        raise UserError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(shown)}")
    updates = {}
    for key, value in values.items():
        try:
            updates[key] = read_value(key, value)
        except ValueError as error:
            raise UserError(f"{source}: '{key}' {error}") from None
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
        raise UserError(f"--preset: unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    resource = resources.files("byol") / "presets" / f"{name}.yaml"
    with resources.as_file(resource) as path:
        return read_yaml(path, source=f"preset {name}")


def resolve(preset: str | None = None, config_file: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """defaults ← the method's recipe ← preset ← YAML file ← overrides (None values in overrides are ignored).

    The method is the last layer's that names one; its official recipe's values (methods.method_defaults)
    replace BYOL's defaults, and everything the user gives overrides them."""
    layers = []
    if preset:
        layers.append((preset_values(preset), f"preset {preset}"))
    if config_file:
        layers.append((read_yaml(config_file), config_file))
    if overrides:
        layers.append(({k: v for k, v in overrides.items() if v is not None}, "command line"))
    method = next((values["method"] for values, _ in reversed(layers) if values.get("method") is not None), "byol")
    config = TrainConfig()
    if isinstance(method, str) and method in METHODS:
        recipe = {k: v for k, v in method_defaults(method).items() if k in FIELDS}
        config = merge(config, recipe, f"method {method}")
    for values, source in layers:
        config = merge(config, with_new_names(values, values.get("method"), source), source)
    return config.validate()


def method_option_users() -> dict[str, list[str]]:
    """Options that only some methods take (named in their constructors), with those methods. Left out:
    the LEARNER_OPTIONS every learner honours, and --norm, which also shapes every method's backbone."""
    users: dict[str, list[str]] = {}
    for method in METHODS:
        for name in model_defaults(method):
            if name in FIELDS and name not in (*LEARNER_OPTIONS, "norm"):
                users.setdefault(name, []).append(method)
    return {name: methods for name, methods in users.items() if len(methods) < len(METHODS)}


def check_method_takes(config: TrainConfig, given: list[str]) -> None:
    """Refuse, in one line, an option given on the command line that the chosen method would ignore (a
    preset or YAML file may hold options for other methods; the command line is what the user just asked)."""
    method, users = config.method, method_option_users()
    for name in given:
        if name in users and method not in users[name]:
            raise UserError(f"{flag(name)}: --method {method} does not use it (only {', '.join(users[name])} do)")
    problem = METHODS[method].config_problem(config, tuple(given))
    if problem:
        raise UserError(problem)


def changed_trajectory_keys(saved: dict, config: TrainConfig) -> list[str]:
    """Options that change what a run learns and differ between a checkpoint's config and this one.
    A key added since the checkpoint was written had its default then; a renamed one is read by its new name."""
    saved = with_new_names(saved, saved.get("method"))
    defaults = TrainConfig()
    return [k for k in TRAJECTORY_KEYS if saved.get(k, getattr(defaults, k)) != getattr(config, k)]


def save_yaml(config: TrainConfig, path: Path, resolved: dict | None = None) -> None:
    """The config as YAML; `resolved` (derived values: peak LR, steps, device) goes under a
    `resolved:` key, which is for reading and ignored when the file is loaded back."""
    values = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_ONLY}
    if resolved:
        values["resolved"] = resolved
    path.write_text(yaml.safe_dump(values, sort_keys=False))
