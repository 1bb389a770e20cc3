"""The `--out` folder of a run: the only place that knows its file names and how each is written.

    checkpoint.pt          TrainingState, written atomically (checkpoint-step<N>.pt: older ones kept)
    config.yaml            the resolved config, with a `resolved:` section of derived values
    metrics.jsonl          one JSON object per logged step
    tensorboard/           the same scalars for TensorBoard
    backbone.safetensors   the trained encoder, with the metadata to rebuild it
    summary.json           steps, wall time, images/s, final loss of a finished run
    eval.json, ablation.json, semi_subsets.json   what `byol eval` and `byol ablate` found

Under torchrun every rank holds a RunDir, but only rank 0's writes (`main=True`); on the other ranks the
write methods do nothing, so the training loop calls them on every rank with one code path.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from byol.runtime.checkpoint import EncoderInfo, TrainingState, atomic_write, keep_recent, save_weights
from byol.runtime.errors import UserError
from byol.training.config import TrainConfig, save_yaml


class RunDir:
    CHECKPOINT = "checkpoint.pt"
    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    TENSORBOARD = "tensorboard"
    ENCODER = "backbone.safetensors"
    SUMMARY = "summary.json"
    EVAL = "eval.json"
    ABLATION = "ablation.json"
    SEMI_SUBSETS = "semi_subsets.json"

    def __init__(self, path: str | Path, main: bool = True):
        self.path = Path(path)
        self.main = main
        self._metrics_file = None

    checkpoint = property(lambda self: self.path / self.CHECKPOINT)
    config = property(lambda self: self.path / self.CONFIG)
    metrics = property(lambda self: self.path / self.METRICS)
    tensorboard = property(lambda self: self.path / self.TENSORBOARD)
    encoder = property(lambda self: self.path / self.ENCODER)
    summary = property(lambda self: self.path / self.SUMMARY)

    def trained_encoder(self) -> Path:
        """The file that holds the run's encoder: backbone.safetensors once finished, else the checkpoint."""
        for path in (self.encoder, self.checkpoint):
            if path.is_file():
                return path
        raise UserError(
            f"{self.path}: a folder with neither {self.ENCODER} nor {self.CHECKPOINT} "
            "(pass a `byol train --out` folder or one of those files)"
        )

    # ---- starting and resuming

    def state_to_resume(self, resume: bool) -> TrainingState | None:
        """The checkpoint to continue from, None for a fresh run, or a UserError: an existing run is
        never overwritten without `resume`."""
        if not self.checkpoint.exists():
            return None
        if not resume:
            raise UserError(f"{self.checkpoint} exists: pass --resume to continue that run, or choose another --out")
        return TrainingState.load(self.checkpoint)

    def start(self, config: TrainConfig, resolved: dict, step: int) -> None:
        """Create the folder, write config.yaml, and make metrics.jsonl hold exactly the steps up to `step`."""
        if not self.main:
            return
        if step == 0:
            # No checkpoint: any metrics.jsonl here is from a run that died before its first one.
            self.metrics.unlink(missing_ok=True)
        else:
            self.truncate_metrics(step)
        self.path.mkdir(parents=True, exist_ok=True)
        save_yaml(config, self.config, resolved=resolved)
        # Held open for the run (closed by close()), so a logged step costs one write and flush.
        self._metrics_file = open(self.metrics, "a")  # noqa: SIM115

    # ---- metrics.jsonl

    def append_metrics(self, record: dict) -> None:
        if self._metrics_file is None:
            return
        try:
            self._metrics_file.write(json.dumps(record) + "\n")
            self._metrics_file.flush()
        except OSError as error:
            raise UserError(
                f"{self.metrics}: cannot write ({error.strerror or error}); the last checkpoint in "
                f"{self.path} is kept, resume with --resume once there is room"
            ) from None

    def read_metrics(self) -> list[dict]:
        """Every whole record; a line torn by a kill or a full disk in mid-write is left out."""
        return [record for _, record in self._metric_lines()]

    def last_metrics_with(self, key: str) -> dict:
        """The last record holding `key`, or {}."""
        return next((r for r in reversed(self.read_metrics()) if key in r), {})

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records logged after the checkpoint we resume from (so each step appears once) and torn lines."""
        if self.metrics.exists():
            kept = [line for line, record in self._metric_lines() if record.get("step", math.inf) <= last_step]
            self.metrics.write_text("".join(line + "\n" for line in kept))

    def _metric_lines(self):
        if not self.metrics.exists():
            return
        for line in self.metrics.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield line, record

    def close(self) -> None:
        if self._metrics_file is not None:
            with contextlib.suppress(OSError):  # a full disk was already reported; do not mask that error
                self._metrics_file.close()
            self._metrics_file = None

    # ---- what a run leaves

    def write_checkpoint(self, state: TrainingState, keep: int = 1) -> None:
        if self.main:
            state.save(self.checkpoint)
            keep_recent(self.checkpoint, state.step, keep)

    def write_encoder(self, weights: dict, info: EncoderInfo) -> None:
        if self.main:
            save_weights(self.encoder, weights, info.to_metadata())

    def write_json(self, name: str, value: dict) -> Path:
        """`name` (summary.json, eval.json, ...) written atomically."""
        path = self.path / name
        if self.main:
            atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=2) + "\n"))
        return path

    def read_json(self, name: str) -> dict | None:
        path = self.path / name
        return json.loads(path.read_text()) if path.exists() else None
