"""byol's GPU check: one call of under 9 minutes on an H100 or H200 (an image with its own torch, no network).

    bash benchmarks/gpu_check.sh                 # = python3 -m benchmarks.gpu_check, from the checkout's root
    DRY=1 bash benchmarks/gpu_check.sh           # a dry run on this CPU: toy sizes, CPU stand-ins, every step

Steps, in this order, each in child processes under a timeout and under what is left of BUDGET_S (a step or
run that does not fit is skipped, one that fails is recorded, and the next one still runs):
  setup    the image's python3 with torch (never installed); `pip install -e . --no-deps --no-build-isolation
           --no-index`; the peers' wheels from .whl/ into WORK/site on PYTHONPATH; an import check; nvidia-smi
  checks   ceilings, host syncs by file:line, a profiled window, phases, what-ifs, parity, data path, JPEG decode
  bench    byol bench: the gpu preset's model, R18 32 px b512 and R50 224 px b128 against byol-pytorch and lightly
  graphs   --cuda-graphs benches; eager vs graphed step and the graphed profile; the SyncBatchNorm variants
  train    a time-boxed `--preset gpu` run on Fashion-MNIST filling TRAIN_S, with its peak CUDA memory
  eval     byol eval of that run's checkpoint
  tests    pytest: tests/training/test_graphs.py -m cuda first, the other -m cuda tests, the --device auto tests
  compile  --compile --cuda-graphs on R18, --compile on R50; skipped under 150 s left
  summary  summary.md from results.json (always)
Each step's module says more (benchmarks/gpu_check/<step>.py; the device side is in measure/).
What the 2026-11-26 H100 run left to measure, in one call: STEPS=setup,graphs,tests,compile.

Knobs, as environment variables or as flags (BUDGET_S=300 or --budget-s 300; `--help` lists them):
  BUDGET_S (510) the check's own deadline; TRAIN_S (120); TRAIN_GRAPHS (0); STEPS (all, comma list);
  RUNS (*: fnmatch patterns of run labels, e.g. 'r18-*,tests-graphs'); DRY (0); DEVICE (cuda; cpu with DRY);
  PROJECT, FMNIST, WHL (found from the checkout: ., .data/fashion-mnist, .whl); PY (python3); OUT
  (device-check-out); WORK (/tmp/byol-device-check, emptied first); GRACE_S (20).

Time: a child's limit is min(its cap, time left - GRACE_S - 5 s), and at that limit it gets SIGINT (SIGTERM for
train), then SIGKILL GRACE_S later, so the check ends within BUDGET_S plus a few seconds for the summary. The
device `run` call's timeout_s must cover it with margin: timeout_s >= BUDGET_S + 70, i.e. 580 by default.

In $OUT (8 files at most come back, 16 MiB each): results.json (everything, one entry per step), log.txt (all
output), summary.md, failures.log (the whole stderr of every failed run and the tracebacks of failed sections;
only when something failed), smi.csv (nvidia-smi at 2 Hz), trace.json.gz (the checks' profiled window).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from . import bench, checks, compile_bench, cuda_tests, evaluate, graphs, setup_env, summary, train
from .context import ALL_STEPS, Context, aggregate, child_env, find_fmnist, find_project, find_wheels, parse_knobs
from .runner import MAX_FILE_BYTES, Budget, Log, Results

STEPS = {
    "setup": setup_env.run,
    "checks": checks.run,
    "bench": bench.run,
    "graphs": graphs.run,
    "train": train.run,
    "eval": evaluate.run,
    "tests": cuda_tests.run,
    "compile": compile_bench.run,
}
assert tuple(STEPS) == ALL_STEPS


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def commit(project: Path | None) -> str:
    try:
        done = subprocess.run(
            ["git", "log", "-1", "--format=%h %<(60,trunc)%s"], cwd=project, capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() or "no git"
    except (OSError, subprocess.SubprocessError):
        return "no git"


def make_context(argv: list[str] | None, environ: dict) -> Context:
    knobs = parse_knobs(argv, environ, __doc__)
    budget = Budget(knobs.budget_s)
    out, work = Path(knobs.out).resolve(), Path(knobs.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    project = find_project(knobs)
    fmnist, whl = find_fmnist(knobs, project), find_wheels(knobs, project)
    meta = {"started": now(), **{k: v for k, v in vars(knobs).items()}, "argv": sys.argv}
    meta.update(project=str(project), commit=commit(project), fmnist=str(fmnist), whl=str(whl))
    log = Log(out / "log.txt")
    results = Results(out / "results.json", meta)
    py = os.path.abspath(knobs.py) if os.sep in knobs.py else knobs.py  # children run in WORK
    return Context(knobs, project, fmnist, whl, out, work, budget, log, results, child_env(project), py)


def run_step(ctx: Context, name: str, fn) -> dict:
    ctx.log(f"\n=== {name}: start {now()}, {ctx.budget.left():.0f}s left")
    start = time.monotonic()
    try:
        entry = fn(ctx)
    except Exception as error:  # recorded; the next step runs
        entry = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        ctx.failure(name, f"==== step {name} raised\n{traceback.format_exc()}\n")
    entry.setdefault("status", aggregate(entry.get("runs", {})))
    entry["seconds"] = round(time.monotonic() - start, 1)
    ctx.results.record(name, entry)
    ctx.log(f"=== {name}: {entry['status']} after {entry['seconds']:.0f}s")
    return entry


def stopped(number, frame):
    raise KeyboardInterrupt(f"the check got {signal.Signals(number).name}")


def run_steps(ctx: Context) -> None:
    for name, fn in STEPS.items():
        if ctx.fatal:
            ctx.results.record(name, {"status": "skipped", "reason": ctx.fatal})
        elif name == "setup" or ctx.wants(name):  # setup always prepares; STEPS says if it installs
            run_step(ctx, name, fn)
        else:
            ctx.results.record(name, {"status": "deselected", "reason": "not in STEPS"})


def check_out_files(ctx: Context) -> dict:
    """What will come back: a file too big to come back is removed (and said so)."""
    files = {}
    for path in sorted(ctx.out.iterdir()):
        if path.is_file() and path.stat().st_size > MAX_FILE_BYTES and path.name != "results.json":
            ctx.log(f"!!! {path.name}: {path.stat().st_size / 2**20:.1f} MiB, over the limit: removed")
            path.unlink()
            continue
        files[path.name] = path.stat().st_size if path.is_file() else "not a file"
    return files


def finish(ctx: Context) -> None:
    sampler = ctx.state.get("smi")
    if sampler is not None:
        sampler.terminate()
        sampler.wait(timeout=10)
    meta = ctx.results.data["meta"]
    meta["total_s"] = round(ctx.budget.elapsed(), 1)  # the summary says it; it takes well under a second
    run_step(ctx, "summary", summary.run)
    meta["files"] = check_out_files(ctx)
    ctx.results.save()
    ctx.log(f"files in OUT: {meta['files']}; total {meta['total_s']:.0f}s")


def main(argv: list[str] | None = None, environ: dict | None = None) -> int:
    ctx = make_context(argv, dict(os.environ if environ is None else environ))
    ctx.log(
        f"byol GPU check {now()}: budget {ctx.knobs.budget_s:.0f}s, steps {','.join(ctx.knobs.steps)}, dry {ctx.dry}"
    )
    ctx.log(
        f"project {ctx.project} ({ctx.results.data['meta']['commit']}); fashion-mnist {ctx.fmnist}; wheels {ctx.whl}"
    )
    previous = signal.signal(signal.SIGTERM, stopped)  # as SIGINT: the child is killed, the summary written
    try:
        if ctx.project is None:
            ctx.fatal = "no byol project here (set PROJECT=DIR)"
        run_steps(ctx)
    except KeyboardInterrupt as error:
        ctx.fatal = f"stopped: {error or 'SIGINT'}"
        ctx.log(f"!!! {ctx.fatal}")
        for name in [name for name in STEPS if name not in ctx.results.data["steps"]]:
            ctx.results.record(name, {"status": "skipped", "reason": ctx.fatal})
    finally:
        finish(ctx)
        ctx.log.close()
        signal.signal(signal.SIGTERM, previous)
    statuses = [step.get("status") for step in ctx.results.data["steps"].values()]
    return 2 if ctx.fatal else 1 if any(s in ("failed", "timeout") for s in statuses) else 0
