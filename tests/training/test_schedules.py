import math

import pytest

from byol import learning_rate, scaled_lr, target_tau


def test_tau_endpoints():
    assert target_tau(0, 1000) == pytest.approx(0.996)
    assert target_tau(1000, 1000) == 1.0
    assert target_tau(0, 1000, base_tau=0.97) == pytest.approx(0.97)


def test_tau_is_the_papers_cosine_and_monotonic():
    total = 500
    values = [target_tau(k, total) for k in range(total + 1)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    for k in (0, 123, 250, 400):
        assert values[k] == pytest.approx(1 - 0.004 * (math.cos(math.pi * k / total) + 1) / 2)
    assert values[250] == pytest.approx(0.998)


def test_lr_warmup_then_cosine_to_zero():
    peak, total, warm = 1.0, 100, 10
    assert learning_rate(0, total, warm, peak) == pytest.approx(0.1)
    assert learning_rate(9, total, warm, peak) == pytest.approx(1.0)
    assert learning_rate(10, total, warm, peak) == pytest.approx(1.0)
    assert learning_rate(55, total, warm, peak) == pytest.approx(0.5)
    assert learning_rate(100, total, warm, peak) == pytest.approx(0.0, abs=1e-12)
    lrs = [learning_rate(k, total, warm, peak) for k in range(total)]
    assert max(lrs) == pytest.approx(peak)
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:]))


def test_linear_scaling_rule():
    assert scaled_lr(0.2, 4096) == pytest.approx(3.2)
    assert scaled_lr(0.2, 256) == pytest.approx(0.2)


def test_schedules_with_a_final_value():
    from byol.training.schedules import weight_decay

    assert target_tau(0, 100, 0.99, final_tau=0.999) == pytest.approx(0.99)
    assert target_tau(100, 100, 0.99, final_tau=0.999) == pytest.approx(0.999)
    assert all(target_tau(k, 100, 0.999, final_tau=0.999) == pytest.approx(0.999) for k in (0, 50, 100))  # constant
    assert learning_rate(100, 100, 10, 1.0, final_lr=0.001) == pytest.approx(0.001)
    assert learning_rate(55, 100, 10, 1.0, final_lr=0.001) == pytest.approx(0.5005)
    assert learning_rate(5, 100, 10, 1.0, final_lr=0.001) == pytest.approx(0.6)  # warm-up unchanged
    assert weight_decay(0, 100, 0.04, 0.4) == pytest.approx(0.04) and weight_decay(100, 100, 0.04, 0.4) == 0.4
    assert weight_decay(50, 100, 0.04, 0.4) == pytest.approx(0.22)
