"""The knobs (environment variables, or the same names as flags: BUDGET_S or --budget-s) and the context
every step gets: where things are, the budget, the log, the results, and how to run a child under a limit."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from .runner import Budget, Finished, Log, Results, append_text, failure_text, run_process

ALL_STEPS = ("setup", "checks", "bench", "graphs", "train", "eval", "tests", "compile")
CHECK_HOME = Path(__file__).resolve().parents[2]  # the checkout this package is in

# name: (default, help). Each is an environment variable and a flag (--budget-s); the flag wins.
KNOBS = {
    "BUDGET_S": ("510", "the check's own deadline in seconds; the run call needs timeout_s >= BUDGET_S + 70"),
    "TRAIN_S": ("120", "seconds the time-boxed training run should fill"),
    "TRAIN_GRAPHS": ("0", "1: train with --cuda-graphs (sized from the graphed bench of the gpu preset's model)"),
    "STEPS": (",".join(ALL_STEPS), "comma list of steps; setup always prepares, the list says if it pip-installs"),
    "RUNS": ("*", "comma list of fnmatch patterns: only the runs (benches, tests, ...) whose label matches"),
    "DRY": ("0", "1: a dry run at toy sizes (on the CPU unless DEVICE says otherwise, with CPU stand-ins)"),
    "DEVICE": ("", "cuda (default), or cpu (the default with DRY=1)"),
    "PROJECT": ("", "the byol checkout to install, bench and test (default: found from here)"),
    "FMNIST": ("", "Fashion-MNIST's folder (default: .data/fashion-mnist and the usual places)"),
    "WHL": ("", "a folder of the peers' wheels (default: .whl)"),
    "PY": ("python3", "the python with torch (the image's own; /opt/torch/.venv/bin/python3 if python3 has none)"),
    "OUT": ("device-check-out", "where results.json, log.txt, summary.md, failures.log, smi.csv, trace land"),
    "WORK": ("/tmp/byol-device-check", "scratch space (emptied first; it does not come back)"),
    "GRACE_S": ("20", "seconds from a child's stop signal to SIGKILL (a second stop signal half way)"),
    "SECTIONS": ("", "comma list: only these sections of the checks and graphs processes (default all)"),
    "CAP_SCALE": ("", "multiplies every run's time cap (default 1; 3 on a dry run, which a loaded CPU slows)"),
}


@dataclass
class Knobs:
    budget_s: float
    train_s: float
    train_graphs: bool
    steps: list[str]
    runs: list[str]
    dry: bool
    device: str
    project: str
    fmnist: str
    whl: str
    py: str
    out: str
    work: str
    grace_s: float
    sections: str
    cap_scale: float


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_knobs(argv: list[str] | None, environ: dict, description: str = "") -> Knobs:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, (default, help_text) in KNOBS.items():
        parser.add_argument(f"--{name.lower().replace('_', '-')}", default=environ.get(name, default), help=help_text)
    raw = parser.parse_args(argv)
    dry = raw.dry not in ("", "0", "false", "no")
    unknown = [s for s in _split(raw.steps) if s not in ALL_STEPS]
    if unknown:
        parser.error(f"STEPS: unknown step {unknown[0]}; choose from {', '.join(ALL_STEPS)}")
    return Knobs(
        budget_s=float(raw.budget_s),
        train_s=float(raw.train_s),
        train_graphs=raw.train_graphs not in ("", "0"),
        steps=_split(raw.steps),
        runs=_split(raw.runs) or ["*"],
        dry=dry,
        device=raw.device or ("cpu" if dry else "cuda"),
        project=raw.project,
        fmnist=raw.fmnist,
        whl=raw.whl,
        py=raw.py,
        out=raw.out,
        work=raw.work,
        grace_s=float(raw.grace_s),
        sections=raw.sections,
        cap_scale=float(raw.cap_scale or (3 if dry else 1)),
    )


def _first(candidates, test) -> Path | None:
    for candidate in candidates:
        if candidate and test(Path(candidate)):
            return Path(candidate).resolve()
    return None


def find_project(knobs: Knobs) -> Path | None:
    cwd = Path.cwd()
    places = [knobs.project, cwd, CHECK_HOME, cwd / ".gpu/main", cwd / "gpu/main", cwd / "main"]
    return _first(places, lambda d: (d / "byol/training/run.py").is_file() and (d / "pyproject.toml").is_file())


def find_fmnist(knobs: Knobs, project: Path | None) -> Path | None:
    places = [knobs.fmnist] + [base / ".data/fashion-mnist" for base in (project, Path.cwd(), CHECK_HOME) if base]
    places += ["/usr/share/datasets/fashion-mnist", Path.home() / ".cache/byol/fashion-mnist"]
    names = ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")
    return _first(places, lambda d: any((d / name).is_file() for name in names))


def find_wheels(knobs: Knobs, project: Path | None) -> Path | None:
    places = [knobs.whl] + [base / ".whl" for base in (project, Path.cwd(), CHECK_HOME) if base]
    return _first(places, lambda d: d.is_dir() and any(d.glob("*.whl")))


def child_env(project: Path | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", TOKENIZERS_PARALLELISM="false")
    paths = [str(p) for p in dict.fromkeys([project, CHECK_HOME]) if p] + _split(env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


@dataclass
class Context:
    knobs: Knobs
    project: Path | None
    fmnist: Path | None
    whl: Path | None
    out: Path
    work: Path
    budget: Budget
    log: Log
    results: Results
    env: dict
    py: str
    fatal: str | None = None
    state: dict = field(default_factory=dict)

    @property
    def dry(self) -> bool:
        return self.knobs.dry

    @property
    def device(self) -> str:
        return self.knobs.device

    @property
    def stand_in(self) -> bool:
        """CPU stand-ins for what needs CUDA (graphs, compile): a dry run on the CPU."""
        return self.knobs.device == "cpu"

    def wants(self, step: str) -> bool:
        return step in self.knobs.steps

    def selected(self, label: str) -> bool:
        return any(fnmatch.fnmatchcase(label, pattern) for pattern in self.knobs.runs)

    def prepend_pythonpath(self, path: Path) -> None:
        self.env["PYTHONPATH"] = os.pathsep.join([str(path), *_split(self.env.get("PYTHONPATH", ""))])

    def measure(self, module: str, out: Path) -> list[str]:
        """The arguments of a measure/ child: `python -m benchmarks.gpu_check.measure.<module> ...`."""
        args = ["-m", f"benchmarks.gpu_check.measure.{module}", "--device", self.device, "--out", str(out)]
        args += ["--small"] * self.dry + ["--stand-in"] * self.stand_in
        return args + (["--only", self.knobs.sections] if self.knobs.sections else [])

    def failure(self, label: str, text: str) -> None:
        append_text(self.out / "failures.log", text)
        self.log(f"!!! {label}: details (all of its stderr) in failures.log")

    def python(self, label: str, args: list[str], need: float, cap: float, **options):
        return self.command(label, [self.py, *args], need, cap, **options)

    def command(self, label, cmd, need, cap, cwd=None, stop=signal.SIGINT, select=True) -> tuple[dict, Finished | None]:
        """Run cmd if RUNS selects its label (or not `select`) and `need` seconds are left: ({status, rc, seconds,
        limit_s}, Finished), or ({status: deselected or skipped}, None)."""
        if select and not self.selected(label):
            return {"status": "deselected"}, None
        left = self.budget.left()
        if left < need:
            self.log(f"--- SKIP {label}: {left:.0f}s left of the {self.knobs.budget_s:.0f}s budget, it needs {need}s")
            return {"status": "skipped", "reason": f"{left:.0f}s left, needs {need}s"}, None
        limit = self.budget.limit(cap * self.knobs.cap_scale, self.knobs.grace_s)
        self.log(f"--- {label}: timeout {limit:.0f}s, {left:.0f}s left")
        done = run_process(
            cmd, limit, self.log, cwd=cwd or self.work, env=self.env, grace=self.knobs.grace_s, stop_signal=stop
        )
        entry = {"status": done.status, "rc": done.rc, "seconds": round(done.seconds, 1), "limit_s": round(limit)}
        self.log(f"--- {label}: {done.status}, rc {done.rc}, after {done.seconds:.1f}s")
        if done.status != "ok":
            self.failure(label, failure_text(label, cmd, done))
        return entry, done


def aggregate(runs: dict) -> str:
    """A step's status from its runs': failed if one failed or timed out, ok if all that ran did, skipped if none
    ran for time or inputs, partial if some ran and some were skipped; deselected runs (RUNS) do not count."""
    kinds = [run.get("status") for run in runs.values() if run.get("status") != "deselected"]
    if not kinds:
        return "deselected"
    if any(kind in ("failed", "timeout") for kind in kinds):
        return "failed"
    if all(kind == "ok" for kind in kinds):
        return "ok"
    return "skipped" if all(kind == "skipped" for kind in kinds) else "partial"


def read_sections(ctx: Context, label: str, path: Path, entry: dict) -> dict:
    """A measure/ child's JSON; its failed sections fail the run and go to failures.log with their tracebacks."""
    try:
        sections = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    failed = [name for name, value in sections.items() if isinstance(value, dict) and "error" in value]
    for name in failed:
        ctx.failure(
            f"{label}/{name}", f"==== {label}/{name}: {sections[name]['error']}\n{sections[name].get('traceback')}\n"
        )
    if failed and entry.get("status") == "ok":
        entry["status"], entry["failed_sections"] = "failed", failed
    return sections
