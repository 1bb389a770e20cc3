"""The graphs step's process: `--cuda-graphs` (byol/training/graphs.py) and the SyncBatchNorm variants (syncbn.py).

graphs: the checks' step (ResNet-18 32 px batch 512, bf16, channels_last), its augmentation, forward and
backward replayed as one CUDA graph; the whole step eager and graphed, back to back, then the graphed
step's profile. The profile comes after the capture, and no profiler session runs in this process before
it (one that does may record no kernels at all). On a CPU (a dry run, --stand-in) the graph API is
fake_cuda.py's stand-in: the code runs, the figures mean nothing.

    python -m benchmarks.gpu_check.measure.graphs --device cuda --out graphs.json
    python -m benchmarks.gpu_check.measure.graphs --device cpu --small --stand-in --out graphs.json
"""

from __future__ import annotations

import sys

import torch

from . import fake_cuda, syncbn
from .common import Target, free_memory, make_step, median_s, ms, parse_args, per_s, run_sections, target
from .profiling import profile_steps


def graphs(t: Target) -> dict:
    from byol.training.graphs import GraphedStep

    s = make_step(t)
    graphed = GraphedStep(s.learner, s.augment, s.optimizer, s.scaler, s.memory_format, s.amp)

    def replay():
        return graphed(s.images, 0.996)

    out = {"config": t.label, "eager_whole_step_ms": ms(median_s(t, s.step, reps=20, warmup=3))}
    for _ in range(GraphedStep.WARMUP_STEPS + 2):  # its eager warm-up, the capture, a first replay
        replay()
    out["graphed_whole_step_ms"] = ms(median_s(t, replay, reps=20, warmup=0))
    out["speedup"] = round(out["eager_whole_step_ms"] / out["graphed_whole_step_ms"], 3)
    out["images_per_s_graphed"] = per_s(t, out["graphed_whole_step_ms"])
    out["captures_before_profile"] = graphed.captures
    _, out["profile"] = profile_steps(t, replay, f"{t.label}, CUDA graph")
    out["captures"] = graphed.captures
    if fake_cuda.EVENTS:
        out["stand_in"] = f"fake CUDA graph API: {fake_cuda.EVENTS.count('capture')} captures, replays did nothing"
    free_memory(t)
    return out


SECTIONS = {"graphs": graphs, "syncbn": syncbn.syncbn}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv)
    t = target(args.device, args.small)
    if args.stand_in and not t.cuda:
        fake_cuda.install()
    if t.cuda:
        torch.backends.cudnn.benchmark = True
    run_sections(SECTIONS, t, args.out, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
