"""The `tests` step, before the compile step: pytest in the project, tests/training/test_graphs.py's CUDA tests first,
then the other `cuda`-marked tests, then the tests that reach CUDA through --device auto (the rest pin
--device cpu). At its limit pytest gets SIGINT, not SIGTERM, so that it still prints its failure report."""

from __future__ import annotations

import re

from .context import Context, aggregate

PYTEST = ["-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
AUTO = (
    "tests/training/test_run.py::test_smoke_preset_end_to_end",
    "tests/evaluation/test_report.py::test_eval_json_has_every_field_and_beats_chance",
    "tests/evaluation/test_report.py::test_semi_protocol_saves_its_subsets",
)
RUNS = (  # label, pytest arguments, need, cap
    ("tests-graphs", ["-m", "cuda", "tests/training/test_graphs.py"], 30, 100),
    ("tests-cuda", ["-m", "cuda", "tests", "--ignore=tests/training/test_graphs.py"], 30, 100),
    ("tests-auto", list(AUTO), 50, 100),
)
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)")


def counts(lines: list[str]) -> dict:
    """pytest's last summary line as numbers: {"passed": 3, "skipped": 1, ...}."""
    for line in reversed(lines):
        found = COUNT.findall(line)
        if found and " in " in line:
            return {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in found}
    return {}


def run(ctx: Context) -> dict:
    runs = {}
    for label, args, need, cap in RUNS:
        entry, done = ctx.python(label, [*PYTEST, *args], need, cap, cwd=ctx.project)
        if done is not None:
            entry["counts"] = counts(done.stdout)
            entry["failures"] = [line for line in done.stdout if line.startswith(("FAILED", "ERROR"))]
        runs[label] = entry
    return {"status": aggregate(runs), "runs": runs}
