import pytest
import torch

from byol import device as device_module
from byol.device import describe_precision, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("name, dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
@pytest.mark.parametrize("amx", [True, False])
def test_an_explicit_precision_is_taken_as_asked(name, dtype, amx, monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_amx", lambda: amx)
    assert resolve_precision(name, CPU) is dtype


@pytest.mark.parametrize("amx, dtype, why", [(True, torch.bfloat16, "bf16 (auto: AMX on this CPU)"),
                                             (False, None, "fp32 (auto: no AMX on this CPU)")])
def test_auto_on_cpu_takes_bf16_only_with_amx(amx, dtype, why, monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_amx", lambda: amx)
    assert resolve_precision("auto", CPU) is dtype
    assert describe_precision("auto", CPU, dtype) == why


def test_amx_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    real_path = device_module.Path
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(device_module, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_fp16\n")
    assert not device_module.cpu_has_amx()  # AVX512-BF16 alone measured slower than fp32
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    assert device_module.cpu_has_amx()
    cpuinfo.unlink()
    assert not device_module.cpu_has_amx()


@pytest.mark.parametrize("amx", [True, False])
def test_choosing_a_precision_leaves_the_initial_weights_alone(amx, monkeypatch):
    # train seeds torch, then resolves the precision, then builds the model: a choice that drew random
    # numbers (the dropped start-up matmul timing did) would silently change every run's initial weights.
    monkeypatch.setattr(device_module, "cpu_has_amx", lambda: amx)
    torch.manual_seed(0)
    expected = torch.randn(4)
    torch.manual_seed(0)
    resolve_precision("auto", CPU)
    describe_precision("auto", CPU, None)
    assert torch.equal(torch.randn(4), expected)


def test_devices_resolve_or_say_why_not(monkeypatch):
    from byol.device import memory_format_for, resolve_device
    from byol.errors import UserError

    assert resolve_device("cpu") == CPU
    with pytest.raises(UserError, match="unknown device 'gpu!'"):
        resolve_device("gpu!")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda:1")
    assert memory_format_for(None, CPU) is torch.channels_last
    assert memory_format_for(False, CPU) is torch.contiguous_format
    assert memory_format_for(None, torch.device("mps")) is torch.contiguous_format
