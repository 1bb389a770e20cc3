"""`byol bench --json ...` in this process, its JSON line printed last: the bench, graphs and compile steps run
this instead of `python -m byol bench` only for what a CPU dry run needs (`--stand-in`, never on a GPU):

- `--cuda-graphs`, which byol refuses on a CPU, is taken off the command line and byol.bench's step is built
  with a GraphedStep anyway, on fake_cuda.py's stand-in for torch.cuda's graph API;
- `--compile` compiles with torch.compile's "eager" backend (dynamo traces the learner; no inductor, whose
  compilation of even a toy ResNet takes minutes on two cores);
- byol.bench's peak FLOP/s is not measured (seconds of big matmuls on a CPU); 1 TFLOP/s stands in.

    python -m benchmarks.gpu_check.measure.bench_cli --device cuda --precision bf16 --image-size 32 ...
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import sys


def _force_graphs() -> None:
    from byol import bench

    from . import fake_cuda

    fake_cuda.install()
    real = bench._our_step

    def with_graphs(*args, **kwargs):
        if len(args) >= 8:
            args = (*args[:7], True, *args[8:])
        else:
            kwargs["cuda_graphs"] = True
        return real(*args, **kwargs)

    bench._our_step = with_graphs


def stand_ins(argv: list[str]) -> tuple[list[str], list[str]]:
    """The command line without what a CPU cannot run, and the stand-ins put in its place."""
    import torch

    from byol import bench

    used = ["peak FLOP/s not measured: 1 TFLOP/s stands in (the checks' ceilings section measures it)"]
    bench.peak_flops = lambda device, dtype: (1e12, "stand-in, not measured")
    if "--cuda-graphs" in argv:
        argv = [a for a in argv if a != "--cuda-graphs"]
        _force_graphs()
        used.append("--cuda-graphs on fake_cuda's graph API (replays do nothing)")
    if "--compile" in argv:
        torch.compile = functools.partial(torch.compile, backend="eager")
        used.append('torch.compile(backend="eager")')
    return argv, used


def main(argv: list[str] | None = None) -> int:
    from byol.cli import main as byol_main

    argv = list(sys.argv[1:] if argv is None else argv)
    used = []
    if "--stand-in" in argv:
        argv, used = stand_ins([a for a in argv if a != "--stand-in"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = byol_main(["bench", "--json", *argv])
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("{")]
    if not lines:
        print(printed.getvalue())
        return rc or 1
    result = json.loads(lines[-1])
    if used:
        result["stand_in"] = used
    print(json.dumps(result), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
