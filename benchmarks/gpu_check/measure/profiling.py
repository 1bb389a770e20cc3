"""One profiled window of steps: GPU-busy time, kernels per step, time by kernel family, the top kernels.

On a CPU (a dry run) the same code reads the CPU ops instead of CUDA kernels, so it runs, but its
figures mean nothing. A profiler session started before a CUDA graph capture in the same process may
record no kernels at all: profile after the capture (graphs.py does).
"""

from __future__ import annotations

import collections
import gzip
import os
import shutil
import tempfile
import time
from collections.abc import Callable

from .common import Target, ms, sync

KERNEL_FAMILIES = (
    (
        "conv/gemm",
        (
            "conv",
            "cudnn",
            "xmma",
            "implicit",
            "cutlass",
            "gemm",
            "wgrad",
            "dgrad",
            "sm90",
            "sm80",
            "nchwtonhwc",
            "nhwc",
        ),
    ),
    ("batchnorm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford")),
    ("foreach(optim/ema)", ("foreach", "multi_tensor", "multitensor")),
    ("grid_sample(augment)", ("grid_sampler",)),
    ("index/nonzero", ("nonzero", "index", "scatter", "gather", "cub::", "select")),
    ("reduction", ("reduce", "norm_kernel", "sum_kernel")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "where", "clamp", "copy", "fill")),
)


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in KERNEL_FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of the (start, end) intervals."""
    busy, cur_s, cur_e = 0.0, None, None
    for a, b in sorted(intervals):
        if cur_e is None or a > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = a, b
        else:
            cur_e = max(cur_e, b)
    if cur_e is not None:
        busy += cur_e - cur_s
    return busy


def _record(t: Target, step: Callable[[], object], steps: int):
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if t.cuda else [ProfilerActivity.CPU]
    kind = DeviceType.CUDA if t.cuda else DeviceType.CPU
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(t)
        wall = time.perf_counter() - start
    return prof, [e for e in prof.events() if e.device_type == kind], wall


def _by_family(kernels) -> tuple[dict, list]:
    by_family = collections.defaultdict(float)
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for e in kernels:
        d = e.time_range.end - e.time_range.start
        by_family[family(e.name)] += d
        by_name[e.name[:90]][0] += 1
        by_name[e.name[:90]][1] += d
    total = sum(by_family.values()) or 1.0
    shares = {k: round(v / total, 3) for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])}
    return shares, sorted(by_name.items(), key=lambda kv: -kv[1][1])[:15]


def profile_steps(t: Target, step: Callable[[], object], label: str, steps: int = 3):
    """(profiler, figures) over `steps` calls of `step`, after 5 untimed calls (1 on a dry run). Times are µs."""
    for _ in range(1 if t.small else 5):
        step()
    sync(t)
    prof, kernels, wall = _record(t, step, steps)
    intervals = [(e.time_range.start, e.time_range.end) for e in kernels]
    busy = busy_time(intervals)
    span = (max(b for _, b in intervals) - min(a for a, _ in intervals)) if intervals else 0.0
    shares, top = _by_family(kernels)
    result = {
        "config": label if t.cuda else f"{label} (CPU ops: a dry run)",
        "steps": steps,
        "wall_ms_per_step_profiled": ms(wall / steps),
        "gpu_kernels_per_step": round(len(kernels) / steps),
        "gpu_busy_ms_per_step": round(busy / 1e3 / steps, 3),
        "gpu_busy_fraction_of_kernel_span": round(busy / span, 3) if span else None,
        "gpu_busy_fraction_of_wall": round(busy / 1e6 / wall, 3),
        "kernel_time_share_by_family": shares,
        "top_kernels": [
            {"name": n, "calls_per_step": round(c / steps, 1), "ms_per_step": round(d / 1e3 / steps, 3)}
            for n, (c, d) in top
        ],
    }
    if not kernels:
        result["warning"] = "no kernels recorded (a profiler session before a CUDA graph capture can do this)"
    return prof, result


def export_trace(prof, path: str) -> None:
    """The Chrome trace, gzipped into `path`; the uncompressed file is written outside $OUT."""
    if not path.endswith(".gz"):
        prof.export_chrome_trace(path)
        return
    tmp = os.path.join(tempfile.gettempdir(), f"byol-trace-{os.getpid()}.json")
    prof.export_chrome_trace(tmp)
    with open(tmp, "rb") as src, gzip.open(path, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(tmp)
