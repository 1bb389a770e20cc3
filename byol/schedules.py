"""Learning-rate and target-momentum schedules as pure functions of the step."""

import math


def target_tau(step: int, total_steps: int, base_tau: float = 0.996) -> float:
    """τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2: τ_base at step 0, exactly 1 at step K.

    τ_base = 0 is held at 0 for the whole run: the paper's "stop-gradient of online" ablation keeps
    τ constant (the schedule would otherwise climb to 1 and turn it into an ordinary BYOL run).
    """
    if base_tau == 0:
        return 0.0
    if total_steps <= 0:
        return 1.0
    progress = min(max(step / total_steps, 0.0), 1.0)
    return 1 - (1 - base_tau) * (math.cos(math.pi * progress) + 1) / 2


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Linear warm-up from 0 to `peak_lr`, then cosine decay to 0 at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    return peak_lr * (math.cos(math.pi * progress) + 1) / 2


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The paper's linear scaling rule: LR = base × batch / 256."""
    return base_lr * batch_size / 256
