"""Checkpoints and exported weights: what they hold, atomic writes, and loads that can never run code."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from byol.runtime.errors import UserError

ENCODER_FORMAT = "byol-encoder-v1"


@dataclass(frozen=True)
class EncoderInfo:
    """Everything needed to rebuild a trained encoder from its weights alone."""

    backbone: str
    width: float
    in_channels: int
    image_size: int
    feature_dim: int
    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stem: str = "auto"  # files written before the option existed used the automatic stem
    norm: str = "batch"

    def to_dict(self) -> dict:
        """Plain types only (lists, not tuples), so a weights_only checkpoint can hold it."""
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> EncoderInfo:
        return cls(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})

    def to_metadata(self) -> dict[str, str]:
        """safetensors metadata: string values, lists as JSON."""
        return {"format": ENCODER_FORMAT, **{k: json.dumps(v) for k, v in self.to_dict().items()}}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> EncoderInfo:
        return cls.from_dict(
            {f.name: json.loads(metadata[f.name]) for f in dataclasses.fields(cls) if f.name in metadata}
        )


@dataclass
class TrainingState:
    """What `checkpoint.pt` holds: everything a run needs to continue bit for bit, and the encoder.

    The one definition of the checkpoint's contents: `Trainer.state_dict` fills it, `Trainer.restore`
    and `load_encoder` read it. Tensors and plain containers only, so a weights_only load can read it.
    """

    FORMAT = 1

    step: int  # optimizer steps taken
    config: dict  # TrainConfig.to_dict() of the run
    model: dict  # the learner's state_dict: online and target networks, predictor, buffers
    optimizer: dict
    encoder_info: dict  # EncoderInfo.to_dict(): rebuilds the encoder from `model` alone
    world_size: int = 1  # processes that trained it (the global batch does not depend on it)
    scaler: dict | None = None  # fp16's GradScaler
    monitor: dict | None = None  # the online probe and its optimizer
    rng: dict | None = None  # Python's, numpy's and torch's global RNG states

    def to_dict(self) -> dict:
        # Not dataclasses.asdict: that would deep-copy every tensor.
        return {"format": self.FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, values: dict, source: str | Path) -> TrainingState:
        if not isinstance(values, dict) or not {"step", "model", "encoder_info"} <= set(values):
            raise UserError(f"{source}: not a byol training checkpoint")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"config": {}, "optimizer": {}, **{k: v for k, v in values.items() if k in known}})

    @classmethod
    def load(cls, path: Path | str) -> TrainingState:
        return cls.from_dict(load_checkpoint(path), path)

    def save(self, path: Path) -> None:
        save_checkpoint(path, self.to_dict())

    def encoder_weights(self) -> dict[str, torch.Tensor]:
        """The online encoder's state_dict, as the backbone alone would name it."""
        prefix = "online_encoder."
        return {k[len(prefix) :]: v for k, v in self.model.items() if k.startswith(prefix)}


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Write through `write(tmp_path)` into a temp file beside `path`, fsync it, then rename.

    A crash or full disk at any point leaves the previous file intact; never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise UserError(f"{path}: cannot write ({error.strerror or error}); the previous file is kept") from None
        raise


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def keep_recent(path: Path, step: int, keep: int) -> None:
    """With keep > 1, the checkpoint just written at `path` also stays as `<stem>-step<N>.pt` (a hard
    link: no extra disk), and only the `keep` most recent of those are kept."""
    if keep <= 1:
        return
    path = Path(path)
    numbered = path.with_name(f"{path.stem}-step{step:09d}{path.suffix}")
    numbered.unlink(missing_ok=True)
    try:
        os.link(path, numbered)
    except OSError:
        try:
            atomic_write(numbered, lambda tmp: shutil.copyfile(path, tmp))
        except UserError:
            return  # the latest checkpoint is safe at `path`; a missing older copy is not worth stopping for
    for old in sorted(path.parent.glob(f"{path.stem}-step*{path.suffix}"))[:-keep]:
        old.unlink(missing_ok=True)


EXPECTED = "expected a checkpoint.pt written by `byol train` or a .safetensors encoder"


def load_checkpoint(path: Path | str) -> dict:
    """Load a training checkpoint with weights_only=True: tensors and plain containers, no code. Anything
    else is a one-line UserError saying what was expected (never torch's advice to load it unsafely)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; YAML, JSON or a bare pickle is not one
        raise UserError(f"{path}: not a checkpoint ({EXPECTED})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise UserError(
            f"{path}: holds objects a safe (weights-only) load refuses, so it was not written by byol ({EXPECTED})"
        ) from None


def save_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(path: Path | str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except Exception as error:
        raise UserError(f"{path}: not a safetensors file ({str(error).splitlines()[0][:200]})") from None
