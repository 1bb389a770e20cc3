"""How byol speaks: one logger for every message, the progress bar and TensorBoard scalars.

Every message goes through the `byol` logger (`log.info`, `log.warning`), printed as one plain line
on stderr (warnings prefixed `warning: `). `verbosity(quiet, main)` sets what is shown: everything, only
warnings (quiet), or nothing but errors on ranks other than 0, so a torchrun job speaks once. To send
byol's messages elsewhere, replace the handlers of `logging.getLogger("byol")`.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

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
