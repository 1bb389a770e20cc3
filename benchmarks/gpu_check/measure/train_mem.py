"""`byol train ...` in this process, then the peak CUDA memory it took (torch.cuda.max_memory_allocated),
written as JSON to the file after `--record`:

    python -m benchmarks.gpu_check.measure.train_mem --record mem.json train --preset gpu --device cuda ...
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from byol.cli import main as byol_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["--record"] or len(argv) < 3:
        print("usage: train_mem --record FILE train ...", file=sys.stderr)
        return 2
    record_path, byol_argv = argv[1], argv[2:]
    start = time.perf_counter()
    rc = byol_main(byol_argv)
    record = {"label": "train-gpu-preset-memory", "rc": rc, "wall_s": round(time.perf_counter() - start, 1)}
    if torch.cuda.is_available():
        record["train_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        record["max_memory_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20)
    print(json.dumps(record), flush=True)
    with open(record_path, "w") as f:
        f.write(json.dumps(record) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
