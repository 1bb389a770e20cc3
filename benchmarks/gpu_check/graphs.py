"""The `graphs` step: `--cuda-graphs` benched (R18/32/512 with byol-pytorch, R50/224/128, and the gpu preset's
model when the train step runs, to size a TRAIN_GRAPHS=1 run), then, in a process of its own, the eager and
graphed step back to back with the graphed step's profile, after its capture, and the SyncBatchNorm variants
(measure/graphs.py). A dry run on the CPU runs all of it on the stand-in for torch.cuda's graph API."""

from __future__ import annotations

from .bench import Spec, bench_one
from .context import Context, aggregate, read_sections

GRAPHS = ("--cuda-graphs",)
SPECS = (
    Spec("r18-32px-b512-graphs", "r18", (*GRAPHS, "--compare", "byol-pytorch"), 40, 100),
    Spec("r50-224px-b128-graphs", "r50", GRAPHS, 45, 120),
)
MODEL = Spec("r18-1ch-28px-b512-graphs", "model", GRAPHS, 30, 75)


def profile(ctx: Context) -> tuple[dict, dict]:
    out = ctx.work / "graphs.json"
    entry, _ = ctx.python("graphs-profile", ctx.measure("graphs", out), 40, 120)
    return entry, read_sections(ctx, "graphs-profile", out, entry)


def run(ctx: Context) -> dict:
    runs = {SPECS[0].label: bench_one(ctx, SPECS[0])}
    runs["graphs-profile"], sections = profile(ctx)
    runs[SPECS[1].label] = bench_one(ctx, SPECS[1])
    if ctx.wants("train"):
        runs[MODEL.label] = bench_one(ctx, MODEL)
    return {"status": aggregate(runs), "runs": runs, "sections": sections}
