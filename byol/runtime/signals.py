"""Pre-emption and Ctrl-C: a request to stop after the current step, with a checkpoint."""

from __future__ import annotations

import signal
import threading

import torch

from byol.runtime.distributed import all_reduce_max, is_distributed
from byol.runtime.logs import log


class StopSignals:
    """SIGTERM (pre-emption) and SIGINT (Ctrl-C) become a request to stop after the current step with a
    checkpoint. A second signal stops at once (the last checkpoint on disk is complete either way).
    A context manager: the previous handlers come back on leaving."""

    NAMES = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.received: int | None = None
        self.previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set from there
            for name in self.NAMES:
                number = getattr(signal, name)
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def _handle(self, number, frame) -> None:
        if self.received is not None:
            self.restore()
            raise KeyboardInterrupt
        self.received = number
        log.info(f"{signal.Signals(number).name}: finishing this step, then writing a checkpoint")

    def agreed(self, device: torch.device) -> int | None:
        """The signal to stop for, if any rank received one (one process: no tensor, no device sync)."""
        if not is_distributed():
            return self.received
        flag = torch.tensor(float(self.received or 0), device=device)
        return int(all_reduce_max(flag)) or None

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
