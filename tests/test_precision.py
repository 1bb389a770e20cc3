import pytest
import torch

from byol import precision
from byol.precision import describe_precision, matmul_flops, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("name, dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_an_explicit_precision_is_taken_as_asked(name, dtype, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: pytest.fail("an explicit choice must not time anything"))
    assert resolve_precision(name, CPU) is dtype


@pytest.mark.parametrize("speedup, dtype", [(0.0, None), (0.56, None), (1.2, None), (1.25, torch.bfloat16),
                                            (4.0, torch.bfloat16)])
def test_auto_on_cpu_takes_bf16_only_where_it_measured_clearly_faster(speedup, dtype, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
    assert resolve_precision("auto", CPU) is dtype


def test_a_cpu_without_bf16_instructions_is_not_timed(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16_instructions", lambda: False)
    monkeypatch.setattr(precision, "matmul_flops", lambda *a, **k: pytest.fail("emulated bf16 must not be timed"))
    assert precision.cpu_bf16_speedup.__wrapped__() == 0.0
    assert "no AVX512-BF16" in describe_precision("auto", CPU, None)


def test_the_log_line_names_the_measured_ratio(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16_instructions", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 0.56)
    assert describe_precision("auto", CPU, None) == "fp32 (auto: a bf16 matmul ran 0.56× fp32 on this CPU)"
    assert describe_precision("bf16", CPU, torch.bfloat16) == "bf16"


def test_matmul_flops_counts_two_flops_per_multiply_add(monkeypatch):
    ticks = iter([0.0, 0.0, 0.5, 1.0, 1.5])  # start, three loop checks (two calls), end
    monkeypatch.setattr(precision.time, "perf_counter", lambda: next(ticks))
    assert matmul_flops(CPU, torch.float32, seconds=1.0) == pytest.approx(2 * 1024**3 * 2 / 1.5)
