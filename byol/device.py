"""Where and in which number format a step runs: the device, the autocast dtype, the memory format.

`precision: auto` is bf16 autocast where bf16 is faster than fp32 and fp32 elsewhere: on CUDA bf16
(fp16 where bf16 is unsupported); on a CPU bf16 only with AMX, because with AVX512-BF16 alone a bf16
step measured slower than fp32 (docs/performance.md has the measurements). The rule reads the CPU's
flags and never times anything at start-up, so the same command trains in the same precision on
every run.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA, then Apple's MPS, then the CPU. A device that is not there is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"unknown device '{name}'; choose auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}': CUDA is not available on this machine (use cpu)")
    return device


def memory_format_for(channels_last: bool | None, device: torch.device) -> torch.memory_format:
    """channels_last when asked, or by default on CPU and CUDA, where it measured faster."""
    if channels_last is None:
        channels_last = device.type in ("cpu", "cuda")
    return torch.channels_last if channels_last else torch.contiguous_format


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


@dataclass(frozen=True)
class Runtime:
    """The resolved device settings of one run or benchmark."""

    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    precision: str  # what was asked: auto, bf16, fp16, fp32

    @classmethod
    def resolve(cls, device: torch.device, precision: str, channels_last: bool | None) -> Runtime:
        return cls(device, resolve_precision(precision, device), memory_format_for(channels_last, device), precision)

    def prepare(self) -> None:
        """Process-wide settings for this device: on CUDA, cuDNN picks the fastest convolution algorithm
        for each shape once (every step has the same shapes, so the search pays off after a few steps)."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def describe_precision(self) -> str:
        return describe_precision(self.precision, self.device, self.amp_dtype)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)
