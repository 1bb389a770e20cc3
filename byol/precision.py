"""Which number format a step computes in.

`auto` is bf16 autocast where bf16 is faster than fp32, fp32 elsewhere. On CPU that takes AMX:
on a 2-core AVX512-BF16 VM without AMX (2026-11-25) a 1024² bf16 matmul ran at 155 GFLOP/s against
275 for fp32, and a ResNet-18 training step 0.81× as fast. Timing both at start-up instead was
tried and dropped: on a busy machine the same CPU measured anywhere from 0.56× to 1.29×, so the same command would
have trained in a different precision from one run to the next.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch


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
        return torch.bfloat16 if cpu_has_amx() else None
    return None


def describe_precision(precision: str, device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """What `auto` chose and, on CPU, why: `fp32 (auto: …)`."""
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    if precision != "auto" or device.type != "cpu":
        return name
    return f"{name} (auto: {'AMX' if amp_dtype is not None else 'no AMX'} on this CPU)"


def cpu_has_amx() -> bool:
    """AMX-BF16 (Sapphire Rapids and later): the CPU feature that makes bf16 autocast pay."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

