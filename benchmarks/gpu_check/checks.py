"""The `checks` step: measure/checks.py in a child of its own (matmul and copy ceilings, host syncs per step by
file:line, a profiled window and its Chrome trace, phase times, the what-ifs, CPU–CUDA parity, the data path,
JPEG decoding). A section that fails fails the step, its traceback in failures.log; the others still run."""

from __future__ import annotations

from .context import Context, read_sections


def run(ctx: Context) -> dict:
    out = ctx.work / "checks.json"
    args = ctx.measure("checks", out) + ["--trace", str(ctx.out / "trace.json.gz")]
    args += ["--fmnist", str(ctx.fmnist)] if ctx.fmnist else []
    entry, _ = ctx.python("checks", args, 45, 120)
    sections = read_sections(ctx, "checks", out, entry)
    return {"status": entry["status"], "runs": {"checks": entry}, "sections": sections}
