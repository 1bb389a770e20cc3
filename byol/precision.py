"""Which number format a step computes in, and the matmul roof it is measured against.

`auto` is bf16 autocast where bf16 is faster than fp32, fp32 elsewhere. On CPU the instruction flags
are not enough to know: on a 2-core AVX512-BF16 VM without AMX (2026-11-25) a 1024² bf16 matmul ran
at 155 GFLOP/s against 275 for fp32, so a flagged CPU is timed once per process before bf16 is chosen.
"""

from __future__ import annotations

import functools
import time
from contextlib import nullcontext
from pathlib import Path

import torch

# bf16 must beat fp32 by this much: near 1× the choice would flip with machine noise and the run
# would lose reproducibility for no speed.
CPU_BF16_MIN_SPEEDUP = 1.25


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP else None
    return None


def describe_precision(precision: str, device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """What `auto` chose and, on CPU, the measurement it chose by: `fp32 (auto: …)`."""
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    if precision != "auto" or device.type != "cpu":
        return name
    if not cpu_has_bf16_instructions():
        return f"{name} (auto: this CPU has no AVX512-BF16 or AMX, bf16 would be emulated)"
    return f"{name} (auto: a bf16 matmul ran {cpu_bf16_speedup():.2f}× fp32 on this CPU)"


def cpu_has_bf16_instructions() -> bool:
    """AVX512-BF16 or AMX: without them bf16 on CPU is emulated and many times slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@functools.cache
def cpu_bf16_speedup() -> float:
    """bf16 matmul FLOP/s over fp32 on this CPU; 0 where bf16 is emulated (not worth timing)."""
    if not cpu_has_bf16_instructions():
        return 0.0
    cpu = torch.device("cpu")
    return matmul_flops(cpu, torch.bfloat16, seconds=0.2) / matmul_flops(cpu, torch.float32, seconds=0.2)


def matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matmul at `dtype` on `device`: the roof a step is measured against."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
        _sync(device)
    return 2 * n**3 * calls / (time.perf_counter() - start)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
