"""How byol speaks: one logger for every message, and the step logger of a training run.

Every message goes through the `byol` logger (`log.info`, `log.warning`), printed as one plain line
on stderr (warnings prefixed `warning: `). `verbosity(quiet, main)` sets what is shown: everything, only
warnings (quiet), or nothing but errors on ranks other than 0, so a torchrun job speaks once. To send
byol's messages elsewhere, replace the handlers of `logging.getLogger("byol")`.

`StepLogger` is what a training run reports per logged step: the metrics record (metrics.jsonl and
TensorBoard), the progress bar, and the collapse warning. It only writes on rank 0.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from .collapse import is_collapsed

log = logging.getLogger("byol")


class _StderrLine(logging.Handler):
    """One line per message on the stderr of the moment (pytest and notebooks swap sys.stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno == logging.WARNING else ""
        print(prefix + record.getMessage(), file=sys.stderr, flush=True)


log.addHandler(_StderrLine())
log.setLevel(logging.INFO)
log.propagate = False  # printed once, by our handler, not again by a root handler someone configured


@contextmanager
def verbosity(quiet: bool = False, main: bool = True):
    """Within the block: INFO and up, WARNING and up when quiet, only errors on ranks other than 0."""
    previous = log.level
    log.setLevel(logging.ERROR if not main else logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        log.setLevel(previous)


class Progress:
    """tqdm on a terminal; on a pipe or log file, a plain line at most every 10 s."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.last_print = 0.0
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, total: int, fields: dict) -> None:
        if not self.enabled:
            return
        text = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()}
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(text, refresh=True)
            return
        now = time.monotonic()
        if now - self.last_print >= 10 or step == total:
            self.last_print = now
            print(f"step {step}/{total} " + " ".join(f"{k}={v}" for k, v in text.items()), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoard:
    """Scalars under `directory` (None: off)."""

    def __init__(self, directory: Path | None):
        self.writer = None
        if directory is not None:
            try:
                # Optional at run time: a missing tensorboard costs the scalars, not the run.
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")
                return
            self.writer = SummaryWriter(str(directory))

    def log(self, record: dict, prefix: str = "train/") -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}{key}", value, record.get("step", 0))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class StepLogger:
    """metrics.jsonl, TensorBoard, the progress bar and the collapse warning of one training run.

    `run` is the run folder (a RunDir, which writes on rank 0 only); on other ranks this logger keeps
    track of collapse like rank 0 but shows and writes nothing.
    """

    def __init__(self, run, main: bool, quiet: bool, tensorboard: bool, total_steps: int, first_step: int):
        self.run = run
        self.total_steps = total_steps
        self.collapsed = False
        self.board = TensorBoard(run.tensorboard if tensorboard and main else None)
        self.progress = Progress(total_steps, first_step, enabled=main and not quiet)

    def write(self, record: dict) -> None:
        """One line of metrics.jsonl (rank 0) and its TensorBoard scalars."""
        self.run.append_metrics(record)
        self.board.log(record)

    def log_step(self, record: dict) -> None:
        """A logged training step: the collapse warning when the state changes, the record, the bar."""
        if is_collapsed(record, record["embedding_dim"]) != self.collapsed:
            self.collapsed = not self.collapsed
            if self.collapsed:
                log.warning(
                    f"the representation has collapsed at step {record['step']} (embedding_std "
                    f"{record['embedding_std']:.4f}, effective_rank {record['effective_rank']:.2f}); "
                    "see docs/ablations.md"
                )
            else:
                log.info(f"step {record['step']}: no longer collapsed")
        self.write(record)
        self.progress.update(record["step"], self.total_steps, self.progress_fields(record))

    def progress_fields(self, record: dict) -> dict:
        fields = {"loss": record["loss"]}
        if "tau" in record:
            fields["tau"] = record["tau"]
        fields.update(
            {"lr": record["lr"], "img/s": round(record["images_per_s"]), "rank": round(record["effective_rank"], 1)}
        )
        if self.collapsed:
            fields["COLLAPSED"] = "yes"
        for key, name in (("probe_top1", "probe"), ("knn_top1", "knn")):
            if key in record:
                fields[name] = round(record[key], 1)
        return fields

    def close(self) -> None:
        self.board.close()
        self.progress.close()
