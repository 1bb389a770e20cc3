import pytest
import torch

from byol.runtime import device as device_module
from byol.runtime.device import describe_precision, resolve_precision

CPU = torch.device("cpu")


INTEL_SAPPHIRE_RAPIDS = (
    "vendor_id\t: GenuineIntel\ncpu family\t: 6\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
)
INTEL_AVX512_BF16 = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_fp16\n"
AMD_ZEN5 = "vendor_id\t: AuthenticAMD\ncpu family\t: 26\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
AMD_ZEN4 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
AMD_ZEN3 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu avx2\n"  # family 25 too, no AVX-512
AMD_AVX512_NO_BF16 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu avx2 avx512f\n"


def _pretend_cpuinfo(text, tmp_path, monkeypatch):
    real_path = device_module.Path
    cpuinfo = tmp_path / "cpuinfo"
    if text is not None:
        cpuinfo.write_text("processor\t: 0\n" + text + "\nprocessor\t: 1\n" + text)
    monkeypatch.setattr(device_module, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))


@pytest.mark.parametrize("name, dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
@pytest.mark.parametrize("cpu", [INTEL_SAPPHIRE_RAPIDS, AMD_ZEN3])
def test_an_explicit_precision_is_taken_as_asked(name, dtype, cpu, tmp_path, monkeypatch):
    _pretend_cpuinfo(cpu, tmp_path, monkeypatch)
    assert resolve_precision(name, CPU) is dtype


@pytest.mark.parametrize(
    "cpu, dtype, why",
    [
        (INTEL_SAPPHIRE_RAPIDS, torch.bfloat16, "bf16 (auto: AMX on this CPU)"),
        (AMD_ZEN5, torch.bfloat16, "bf16 (auto: AMD Zen 4 or later with AVX512-BF16)"),
        (AMD_ZEN4, torch.bfloat16, "bf16 (auto: AMD Zen 4 or later with AVX512-BF16)"),
        # measured 0.81x of fp32 on a training step: the flag alone is not enough
        (INTEL_AVX512_BF16, None, "fp32 (auto: no AMX, and not an AMD CPU with AVX512-BF16)"),
        (AMD_ZEN3, None, "fp32 (auto: no AMX, and not an AMD CPU with AVX512-BF16)"),
        (AMD_AVX512_NO_BF16, None, "fp32 (auto: no AMX, and not an AMD CPU with AVX512-BF16)"),
        (None, None, "fp32 (auto: CPU unknown (no /proc/cpuinfo))"),
    ],
)
def test_auto_on_cpu_follows_the_measured_rule_for_the_cpu_family(cpu, dtype, why, tmp_path, monkeypatch):
    _pretend_cpuinfo(cpu, tmp_path, monkeypatch)
    assert resolve_precision("auto", CPU) is dtype
    assert describe_precision("auto", CPU, dtype) == why


@pytest.mark.parametrize(
    "capability, dtype, why",
    [
        ((9, 0), torch.bfloat16, "bf16 (auto: native on compute capability 9.0)"),  # H100
        ((8, 0), torch.bfloat16, "bf16 (auto: native on compute capability 8.0)"),  # A100
        ((7, 5), torch.float16, "fp16 (auto: compute capability 7.5 has no native bf16)"),  # T4: emulated bf16
        ((7, 0), torch.float16, "fp16 (auto: compute capability 7.0 has no native bf16)"),  # V100
    ],
)
def test_auto_on_cuda_takes_bf16_only_where_the_gpu_computes_it(capability, dtype, why, monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # torch's answer
    cuda = torch.device("cuda")
    assert resolve_precision("auto", cuda) is dtype
    assert describe_precision("auto", cuda, dtype) == why
    assert resolve_precision("bf16", cuda) is torch.bfloat16  # asked for: taken, emulated or not


def test_cpuinfo_is_read_from_the_first_processor():
    cpu = device_module.CpuInfo.parse("processor\t: 0\n" + AMD_ZEN5 + "\nprocessor\t: 1\n" + INTEL_AVX512_BF16)
    assert (cpu.vendor, cpu.family) == ("AuthenticAMD", 26) and "avx512_bf16" in cpu.flags
    assert device_module.CpuInfo.parse("") == device_module.CpuInfo("", 0, frozenset())


@pytest.mark.parametrize("cpu", [INTEL_SAPPHIRE_RAPIDS, INTEL_AVX512_BF16])
def test_choosing_a_precision_leaves_the_initial_weights_alone(cpu, tmp_path, monkeypatch):
    # train seeds torch, then resolves the precision, then builds the model: a choice that drew random
    # numbers (the dropped start-up matmul timing did) would silently change every run's initial weights.
    _pretend_cpuinfo(cpu, tmp_path, monkeypatch)
    torch.manual_seed(0)
    expected = torch.randn(4)
    torch.manual_seed(0)
    resolve_precision("auto", CPU)
    describe_precision("auto", CPU, None)
    assert torch.equal(torch.randn(4), expected)


def test_devices_resolve_or_say_why_not(monkeypatch):
    from byol.runtime.device import memory_format_for, resolve_device
    from byol.runtime.errors import UserError

    assert resolve_device("cpu") == CPU
    with pytest.raises(UserError, match="unknown device 'gpu!'"):
        resolve_device("gpu!")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda:1")
    assert memory_format_for(None, CPU) is torch.channels_last
    assert memory_format_for(False, CPU) is torch.contiguous_format
    assert memory_format_for(None, torch.device("mps")) is torch.contiguous_format
