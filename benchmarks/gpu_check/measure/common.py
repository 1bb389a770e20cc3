"""What the device-side measurements share: the model under test, timers, host-sync counting, sections."""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from byol.data.augment import BYOLAugment
from byol.training.config import TrainConfig
from byol.training.trainer import build_learner, optimizer_for, training_step

CL = torch.channels_last
T0 = time.perf_counter()


@dataclass(frozen=True)
class Target:
    """The device and the model a section measures: ResNet-18 32 px batch 512 on a GPU, a toy on a dry run."""

    device: torch.device
    small: bool
    backbone: str = "resnet18"
    width: float = 1.0
    size: int = 32
    channels: int = 3
    batch: int = 512

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def amp(self) -> torch.dtype | None:
        return torch.bfloat16 if self.cuda else None

    @property
    def label(self) -> str:
        return (
            f"{self.backbone} x{self.width} {self.size}px {self.channels}ch batch {self.batch} {self.amp} channels_last"
        )

    def reps(self, n: int) -> int:
        """Timed repetitions: fewer on a dry run, whose figures mean nothing."""
        return min(n, 2) if self.small else n


def target(device: str, small: bool) -> Target:
    if small:
        return Target(torch.device(device), True, width=0.125, size=16, batch=16)
    return Target(torch.device(device), False)


def parse_args(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--trace", default="", help="a Chrome trace of the profiled window (.json.gz)")
    parser.add_argument("--fmnist", default="", help="Fashion-MNIST's folder (else synthetic images)")
    parser.add_argument("--small", action="store_true", help="toy sizes, for a dry run")
    parser.add_argument("--stand-in", action="store_true", help="CPU stand-ins for CUDA's graph API")
    parser.add_argument("--only", default="", help="comma list of sections")
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[measure {time.perf_counter() - T0:6.1f}s] {message}", flush=True)


def sync(t: Target) -> None:
    if t.cuda:
        torch.cuda.synchronize(t.device)


def median_s(t: Target, fn: Callable[[], object], reps: int = 10, warmup: int = 2) -> float:
    """Median seconds of one call of fn, each synchronised, after `warmup` untimed calls (1 at most on a dry run)."""
    for _ in range(min(warmup, 1) if t.small else warmup):
        fn()
    sync(t)
    times = []
    for _ in range(t.reps(reps)):
        start = time.perf_counter()
        fn()
        sync(t)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ms(seconds: float) -> float:
    return round(1000 * seconds, 3)


def per_s(t: Target, milliseconds: float) -> float:
    return round(t.batch / (milliseconds / 1e3), 1)


def make_step(t: Target, channels_last: bool = True, fp16: bool = False) -> SimpleNamespace:
    """The training step `byol train` runs (trainer.training_step), on random uint8 images on the device."""
    torch.manual_seed(0)
    cfg = TrainConfig(backbone=t.backbone, width=t.width, batch_size=t.batch)
    memory_format = CL if channels_last else torch.contiguous_format
    learner = build_learner(cfg, t.channels, t.size).to(t.device).to(memory_format=memory_format)
    optimizer = optimizer_for(cfg, learner)
    for group in optimizer.param_groups:
        group["lr"] = 0.3 * t.batch / 256
    augment = BYOLAugment(t.size, (0.5,) * t.channels, (0.25,) * t.channels).to(t.device)
    amp = torch.float16 if fp16 else t.amp
    scaler = torch.amp.GradScaler(t.device.type, enabled=fp16)
    images = torch.randint(0, 256, (t.batch, t.channels, t.size, t.size), dtype=torch.uint8, device=t.device)

    def step():
        return training_step(learner, augment, optimizer, scaler, images, 0.996, memory_format, amp)

    return SimpleNamespace(
        learner=learner,
        optimizer=optimizer,
        augment=augment,
        scaler=scaler,
        images=images,
        step=step,
        memory_format=memory_format,
        amp=amp,
    )


def views(t: Target, s: SimpleNamespace) -> list[torch.Tensor]:
    return [v.contiguous(memory_format=CL) for v in s.augment(s.images)]


def forward_backward(t: Target, s: SimpleNamespace, v1: torch.Tensor, v2: torch.Tensor, set_to_none=True) -> None:
    with torch.autocast(t.device.type, dtype=s.amp, enabled=s.amp is not None):
        loss = s.learner(v1, v2)
    s.optimizer.zero_grad(set_to_none=set_to_none)
    loss.backward()


def _where(filename: str, line: int) -> str:
    name = os.path.relpath(filename) if "byol" in filename else os.path.basename(filename)
    return f"{name}:{line}"


def count_syncs(t: Target, fn: Callable[[], object]) -> dict:
    """Synchronising CUDA calls made by fn(), grouped by the Python line that made them (none counted on a CPU)."""
    if not t.cuda:
        fn()
        return {"total": None, "by_line": {}}
    sync(t)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    hits = [w for w in caught if "synchroniz" in str(w.message).lower()]
    lines = collections.Counter(_where(w.filename, w.lineno) for w in hits)
    return {"total": len(hits), "by_line": dict(lines.most_common(12))}


def free_memory(t: Target) -> None:
    if t.cuda:
        torch.cuda.empty_cache()


def _guarded(name: str, fn: Callable[[Target], dict], t: Target) -> dict:
    start = time.perf_counter()
    try:
        result = fn(t)
    except Exception as error:  # recorded; the next section runs
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-6000:]}
        say(f"{name}: FAILED {type(error).__name__}: {error}")
    else:
        say(f"{name}: done in {time.perf_counter() - start:.1f}s")
    result["section_s"] = round(time.perf_counter() - start, 2)
    return result


def run_sections(sections: dict[str, Callable[[Target], dict]], t: Target, out: str, only: str = "") -> dict:
    """Each section in turn, each guarded; the JSON file is rewritten after each (a timeout keeps what was done)."""
    wanted = {s.strip() for s in only.split(",") if s.strip()}
    results: dict = {"device_arg": str(t.device), "small": t.small}
    for name, fn in sections.items():
        if wanted and name not in wanted:
            continue
        results[name] = _guarded(name, fn, t)
        results["elapsed_s"] = round(time.perf_counter() - T0, 1)
        write_json(out, results)
    return results


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)
