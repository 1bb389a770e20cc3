"""Where and in which number format a step runs: the device, the autocast dtype, the memory format.

`precision: auto` is bf16 autocast where bf16 is faster than fp32 and fp32 elsewhere: on CUDA bf16
(fp16 where bf16 is unsupported); on a CPU by the rules in `CPU_BF16_RULES`, one per CPU family that
was measured (docs/performance.md, "Precision on the CPU"). The rule reads what the CPU reports
(vendor, family, flags) and never times anything at start-up, so the same command trains in the same
precision on every run.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from byol.runtime.errors import UserError

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
        return torch.bfloat16 if cuda_bf16_rule(device)[0] else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16_rule()[0] else None
    return None


def describe_precision(precision: str, device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """What `auto` chose and, on CPU, which rule chose it: `bf16 (auto: …)`."""
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    if precision != "auto" or device.type not in ("cpu", "cuda"):
        return name
    return f"{name} (auto: {(cuda_bf16_rule(device) if device.type == 'cuda' else cpu_bf16_rule())[1]})"


def cuda_bf16_rule(device: torch.device) -> tuple[bool, str]:
    """bf16 where the GPU computes it natively (compute capability 8.0, Ampere, and later; ROCm); fp16
    before that. torch.cuda.is_bf16_supported() also says yes for the emulated bf16 of a T4 or V100,
    which is far slower there than fp16."""
    if torch.version.hip:
        return True, "ROCm"
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return True, f"native on compute capability {major}.{minor}"
    return False, f"compute capability {major}.{minor} has no native bf16"


@dataclass(frozen=True)
class CpuInfo:
    vendor: str  # GenuineIntel, AuthenticAMD, …
    family: int  # x86 CPU family: AMD 25 is Zen 3/Zen 4, 26 is Zen 5
    flags: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> CpuInfo:
        """The first processor's entry of a /proc/cpuinfo text (every core of one machine reports the same)."""
        fields = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        family = fields.get("cpu family", "")
        return cls(
            fields.get("vendor_id", ""),
            int(family) if family.isdigit() else 0,
            frozenset(fields.get("flags", "").split()),
        )


# (bf16?, why, applies to): the first rule that applies decides. Each entry is a measured CPU family:
# a bf16 training step against fp32 on the same machine (docs/performance.md).
CPU_BF16_RULES = (
    (True, "AMX on this CPU", lambda cpu: "amx_bf16" in cpu.flags),  # Sapphire Rapids and later
    # Zen 4 and Zen 5 run AVX512-BF16 natively at full width: 1.4-1.8x on a step (Zen 3 has no AVX-512)
    (
        True,
        "AMD Zen 4 or later with AVX512-BF16",
        lambda cpu: cpu.vendor == "AuthenticAMD" and cpu.family >= 25 and "avx512_bf16" in cpu.flags,
    ),
    # Intel's AVX512-BF16 without AMX measured 0.81x on a step; without AVX512-BF16 bf16 is emulated
    (False, "no AMX, and not an AMD CPU with AVX512-BF16", lambda cpu: True),
)


def cpu_bf16_rule(cpu: CpuInfo | None = None) -> tuple[bool, str]:
    """Whether `auto` takes bf16 on this CPU, and the rule's reason (printed by `byol train` and `byol bench`)."""
    if cpu is None:
        try:
            cpu = CpuInfo.parse(Path("/proc/cpuinfo").read_text())
        except OSError:
            return False, "CPU unknown (no /proc/cpuinfo)"
    return next((bf16, why) for bf16, why, applies in CPU_BF16_RULES if applies(cpu))


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True):
    """Autocast to `dtype` (None: fp32, no autocast). `cache=False` inside a CUDA graph capture: cast weights
    kept past the capture would point into the graph's memory."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


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
