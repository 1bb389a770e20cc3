"""The `compile` step, last: compilation alone took over 99 s for ResNet-18 on an H100, so the step is skipped
when under MIN_LEFT seconds are left, rather than started under a limit it cannot meet.

  r18-32px-b512-compile-graphs   --compile --cuda-graphs together (the graphs step has them apart)
  r50-224px-b128-compile         --compile

Only BYOL is benched here. (DINO with both: when its teacher temperature changes, GraphedStep runs one eager
step, where a compiled forward recompiles, before it captures again; tests/training/test_graphs.py.)
A dry run on the CPU compiles with torch.compile's "eager" backend (measure/bench_cli.py).
"""

from __future__ import annotations

from .bench import Spec, bench_runs
from .context import Context

MIN_LEFT = 150
SPECS = (
    Spec("r18-32px-b512-compile-graphs", "r18", ("--compile", "--cuda-graphs"), MIN_LEFT, 300),
    Spec("r50-224px-b128-compile", "r50", ("--compile",), MIN_LEFT, 300),
)


def run(ctx: Context) -> dict:
    left = ctx.budget.left()
    if left < MIN_LEFT:
        return {"status": "skipped", "reason": f"{left:.0f}s left; compilation needs {MIN_LEFT}s"}
    return bench_runs(ctx, SPECS)
