"""The `train` step: `byol train --preset gpu --device cuda` on Fashion-MNIST, its epochs sized from the bench of
the gpu preset's model to fill TRAIN_S seconds (TRAIN_GRAPHS=1: with --cuda-graphs, sized from the graphed
bench), in measure/train_mem.py (peak CUDA memory). At its limit it gets SIGTERM: byol checkpoints and stops.
results.json keeps its summary, metrics and config; the run folder stays in WORK for the eval step."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from .bench import rate
from .context import Context

STEPS_PER_EPOCH = 117  # Fashion-MNIST's 60,000 images at batch 512
MAX_METRIC_LINES = 2000


def size_epochs(images_per_s: float | None, train_s: float) -> tuple[int, float]:
    """(epochs, warm-up epochs) to fill train_s, with the kNN monitor every 10 epochs and a checkpoint every
    2000 steps (estimates: 5% and 0.2 s an epoch)."""
    epoch_s = STEPS_PER_EPOCH * 512 / (images_per_s or 6000.0) * 1.05 + 0.2
    epochs = max(1, min(300, int((train_s - 25) / epoch_s)))
    return epochs, max(0.5, round(epochs / 10, 1))


def train_arguments(ctx: Context, run_dir: Path, epochs: int, warmup: float) -> list[str]:
    if ctx.dry:
        args = ["train", "--preset", "smoke", "--epochs", "1", "--device", ctx.device, "--precision", "fp32"]
        return [*args, "--data", str(ctx.fmnist), "--out", str(run_dir)]
    args = ["train", "--preset", "gpu", "--device", ctx.device, "--epochs", str(epochs)]
    args += ["--warmup-epochs", str(warmup), "--data", str(ctx.fmnist), "--out", str(run_dir)]
    return [*args, "--cuda-graphs"] if ctx.knobs.train_graphs else args


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path, limit: int = MAX_METRIC_LINES) -> list:
    try:
        lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    except OSError:
        return []
    return [json.loads(line) for line in lines[-limit:]]


def run(ctx: Context) -> dict:
    if ctx.fmnist is None:
        return {"status": "skipped", "reason": "no Fashion-MNIST (bring .data/fashion-mnist along)"}
    label = "r18-1ch-28px-b512-graphs" if ctx.knobs.train_graphs else "r18-1ch-28px-b512"
    images_per_s = rate(ctx, label)
    epochs, warmup = (1, 0.5) if ctx.dry else size_epochs(images_per_s, ctx.knobs.train_s)
    ctx.log(f"training: {epochs} epochs (warm-up {warmup}) sized to ~{ctx.knobs.train_s:.0f}s from {label}")
    run_dir, memory = ctx.work / "run-gpu-preset", ctx.work / "train_mem.json"
    args = ["-m", "benchmarks.gpu_check.measure.train_mem", "--record", str(memory)]
    entry, _ = ctx.python(
        "train", args + train_arguments(ctx, run_dir, epochs, warmup), 60, ctx.knobs.train_s + 60, stop=signal.SIGTERM
    )
    ctx.state["run_dir"] = run_dir
    config = run_dir / "config.yaml"
    return {
        "status": entry["status"],
        "runs": {"train": entry},
        "epochs": epochs,
        "warmup_epochs": warmup,
        "sized_from": {"label": label, "images_per_s": images_per_s},
        "memory": read_json(memory),
        "summary": read_json(run_dir / "summary.json"),
        "metrics": read_jsonl(run_dir / "metrics.jsonl"),
        "config_yaml": config.read_text() if config.exists() else None,
    }
