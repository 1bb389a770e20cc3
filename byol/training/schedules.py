"""Learning-rate, target-momentum and weight-decay schedules as pure functions of the step."""

import math


def cosine(progress: float) -> float:
    """1 at progress 0, 0 at progress 1, half a cosine between (progress is clamped to [0, 1])."""
    return (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


def target_tau(step: int, total_steps: int, base_tau: float = 0.996, final_tau: float = 1.0) -> float:
    """τ_k = τ_final − (τ_final − τ_base)·(cos(πk/K) + 1)/2: τ_base at step 0, τ_final at step K.

    BYOL's is τ_final = 1; MoCo's official momentum is constant (τ_final = τ_base). τ_base = 0 is held at
    0 for the whole run: the paper's "stop-gradient of online" ablation keeps τ constant (the schedule
    would otherwise climb and turn it into an ordinary BYOL run).
    """
    if base_tau == 0:
        return 0.0
    if total_steps <= 0:
        return final_tau
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final_tau - (final_tau - base_tau) * (math.cos(math.pi * progress) + 1) / 2


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak_lr: float, final_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to `peak_lr`, then cosine decay to `final_lr` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    return final_lr + (peak_lr - final_lr) * (math.cos(math.pi * progress) + 1) / 2


def weight_decay(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine from `start` at step 0 to `end` at `total_steps` (DINO's 0.04 → 0.4 for ViTs)."""
    return end - (end - start) * cosine(step / total_steps if total_steps > 0 else 1.0)


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The paper's linear scaling rule: LR = base × batch / 256."""
    return base_lr * batch_size / 256
