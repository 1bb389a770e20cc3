"""The driver's plumbing (standard library only, no torch): the time budget, the log, results.json,
failures.log, and child processes under a time limit.

A child runs in its own process group. At its limit the group gets `stop_signal` (SIGINT by default: pytest
then prints its failure report, byol train checkpoints and stops), again grace/2 seconds later, and SIGKILL
`grace` seconds later. Its
stdout and stderr go line by line into the log as they come; a child that fails or times out has its whole
stderr (and the end of its stdout) appended to failures.log, since nothing outside $OUT comes back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 15 * 2**20  # a file over 16 MiB does not come back from the device machine
STDOUT_TAIL_LINES = 200


class Budget:
    """Seconds left of the check's own deadline."""

    def __init__(self, seconds: float, clock=time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def limit(self, cap: float, grace: float) -> float:
        """A child's time limit: its cap, or what is left less the kill grace and 5 s, whichever is less."""
        return max(1.0, min(cap, self.left() - grace - 5))


class Log:
    """Lines to the console and to a file (stopped, with a note, before it grows past what comes back)."""

    def __init__(self, path: Path, echo: bool = True):
        self.path, self.echo = path, echo
        self.file = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by close()
        self.lock = threading.Lock()
        self.full = False

    def __call__(self, text: str) -> None:
        with self.lock:
            if self.echo:
                print(text, flush=True)
            if self.full or self.file.closed:
                return
            if self.file.tell() > MAX_FILE_BYTES:
                self.file.write("... log truncated here (size limit); the rest went to the console only\n")
                self.full = True
            else:
                self.file.write(text + "\n")
            self.file.flush()

    def close(self) -> None:
        with self.lock:
            self.file.close()


class Results:
    """results.json: the check's meta data and one entry per step, rewritten after each step."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.data: dict = {"meta": meta, "steps": {}}
        self.save()

    def record(self, name: str, entry: dict) -> None:
        self.data["steps"][name] = entry
        self.save()

    def step(self, name: str) -> dict:
        return self.data["steps"].get(name, {})

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def append_text(path: Path, text: str) -> None:
    """Appended unless the file would pass the size limit (then a one-line note)."""
    size = path.stat().st_size if path.exists() else 0
    if size + len(text) > MAX_FILE_BYTES:
        text = f"... {len(text)} characters left out (size limit)\n"
    with open(path, "a", encoding="utf-8", errors="replace") as f:
        f.write(text)


@dataclass
class Finished:
    rc: int | None
    seconds: float
    timed_out: bool
    stdout: list[str]
    stderr: list[str]

    @property
    def status(self) -> str:
        return "timeout" if self.timed_out else "ok" if self.rc == 0 else "failed"


def _pump(stream, sink: list[str], log: Log, prefix: str) -> None:
    for line in stream:
        line = line.rstrip("\n")
        sink.append(line)
        log(prefix + line)


def _stop(proc: subprocess.Popen, stop_signal: int, grace: float) -> None:
    """stop_signal to the child's process group, again after grace/2 seconds (byol train, also inside a test,
    takes the first as a request to stop after the step, the second as stop now), SIGKILL after `grace`."""
    for sig in (stop_signal, stop_signal, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace / 2)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    proc.wait()


def run_process(
    cmd: list[str], limit: float, log: Log, *, cwd=None, env=None, grace: float = 20, stop_signal=signal.SIGINT
) -> Finished:
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
    except OSError as error:
        return Finished(None, time.monotonic() - start, False, [], [f"cannot start {cmd[0]}: {error}"])
    out, err = [], []
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out, log, ""), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, log, ""), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        log(f"!!! {cmd[0]}: past its {limit:.0f}s limit: signal {signal.Signals(stop_signal).name}, kill in {grace}s")
        _stop(proc, stop_signal, grace)
    except BaseException:  # the driver itself is stopped: its child goes too
        _stop(proc, signal.SIGKILL, 2)
        raise
    for pump in pumps:
        pump.join(timeout=5)
    return Finished(proc.returncode, time.monotonic() - start, timed_out, out, err)


def failure_text(label: str, cmd: list[str], done: Finished) -> str:
    tail = done.stdout[-STDOUT_TAIL_LINES:]
    return "\n".join(
        [
            f"==== {label}: {done.status}, rc {done.rc}, after {done.seconds:.1f}s",
            f"command: {' '.join(cmd)}",
            f"---- stderr ({len(done.stderr)} lines, all of them)",
            *done.stderr,
            f"---- stdout (the last {len(tail)} of {len(done.stdout)} lines)",
            *tail,
            "",
        ]
    )
