"""The `whatif` section: the old ways against today's defaults, each a monkeypatch in this process only.

The augmentation as one torch call per operation (before the batched path and its colour kernel); the old
masking indexed by nonzero() (a host sync per op), on that path; LARS updated one parameter at a time before it
went multi-tensor; cudnn.benchmark off; contiguous tensors instead of channels_last; the EMA as lerp.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

from byol.data import augment as aug_mod

from .common import Target, count_syncs, forward_backward, free_memory, make_step, median_s, ms, per_s, views


def lars_loop_step(optimizer: torch.optim.Optimizer) -> None:
    """The update byol.training.optim.LARS made before it went multi-tensor: one parameter at a time."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where((pn > 0) & (gn > 0), group["trust_coefficient"] * pn / gn, torch.ones_like(pn))
                    grad = grad * trust
                buf = optimizer.state[p]["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(grad, alpha=group["lr"])
                p.sub_(buf)


@contextlib.contextmanager
def per_operation_path(masking=None):
    """The augmentation view by view, one torch call per operation (what runs on the CPU), masked with
    `masking` (default: torch.where over the whole batch)."""
    saved = aug_mod.batched_path, aug_mod._apply_to
    aug_mod.batched_path = lambda x: False
    aug_mod._apply_to = masking or aug_mod._apply_where
    try:
        yield
    finally:
        aug_mod.batched_path, aug_mod._apply_to = saved


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _augment(t: Target, s: SimpleNamespace) -> dict:
    out = {"augment_default_ms": ms(median_s(t, lambda: s.augment(s.images)))}
    torch.manual_seed(7)
    ref = s.augment(s.images)
    del ref  # the per-operation path draws view by view: other numbers, so other pixels (tests compare the two)
    with per_operation_path():
        out["augment_per_op_ms"] = ms(median_s(t, lambda: s.augment(s.images)))
        out["step_with_augment_per_op_ms"] = ms(median_s(t, s.step))
    with per_operation_path(aug_mod._apply_to_selected):  # the old masking: index by nonzero()
        out["augment_nonzero_syncs"] = count_syncs(t, lambda: s.augment(s.images))["total"]
        out["augment_nonzero_ms"] = ms(median_s(t, lambda: s.augment(s.images)))
        out["step_with_augment_nonzero_ms"] = ms(median_s(t, s.step))
    out["augment_default_syncs"] = count_syncs(t, lambda: s.augment(s.images))["total"]
    return out


def _lars_difference(t: Target, s: SimpleNamespace) -> float:
    """Largest relative difference, over parameters, of one loop update against one multi-tensor update."""
    v1, v2 = views(t, s)
    forward_backward(t, s, v1, v2)
    params = [p for g in s.optimizer.param_groups for p in g["params"]]
    saved_p = [p.detach().clone() for p in params]
    saved_b = {p: s.optimizer.state[p]["momentum_buffer"].clone() for p in params if p in s.optimizer.state}
    s.optimizer.step()
    after_default = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, saved_p):
            p.copy_(v)
        for p, b in saved_b.items():
            s.optimizer.state[p]["momentum_buffer"].copy_(b)
    lars_loop_step(s.optimizer)
    return max(float((p.detach() - r).norm() / r.norm().clamp_min(1e-30)) for p, r in zip(params, after_default))


def _lars_and_ema(t: Target, s: SimpleNamespace) -> dict:
    out = {"lars_loop_max_rel_diff_vs_foreach": _lars_difference(t, s)}
    out["lars_foreach_ms"] = ms(median_s(t, s.optimizer.step))
    out["lars_loop_ms"] = ms(median_s(t, lambda: lars_loop_step(s.optimizer)))
    target, online = s.learner.target_parameters(), s.learner.online_parameters()
    out["ema_mul_add_ms"] = ms(median_s(t, lambda: s.learner.update_target(0.99)))
    out["ema_lerp_ms"] = ms(median_s(t, lambda: torch._foreach_lerp_(target, online, 0.01)))
    return out


def _warm_median_ms(t: Target, step) -> float:
    for _ in range(3):
        step()
    return ms(median_s(t, step))


def _all_old_ways(t: Target, s: SimpleNamespace) -> float:
    """The per-operation augmentation with nonzero masking, per-parameter LARS and no cudnn.benchmark, together."""
    original_step = s.optimizer.step
    s.optimizer.step = lambda closure=None: lars_loop_step(s.optimizer)
    try:
        with per_operation_path(aug_mod._apply_to_selected), cudnn_benchmark(False):
            return _warm_median_ms(t, s.step)
    finally:
        s.optimizer.step = original_step


def whatif(t: Target) -> dict:
    out = {"config": t.label}
    s = make_step(t)
    out["baseline_step_ms"] = _warm_median_ms(t, s.step)
    out.update(_augment(t, s))
    out.update(_lars_and_ema(t, s))
    if t.cuda:
        with cudnn_benchmark(False):
            out["step_cudnn_benchmark_off_ms"] = _warm_median_ms(t, s.step)
    out["step_all_old_ways_ms"] = _all_old_ways(t, s)
    del s
    out["step_contiguous_format_ms"] = _warm_median_ms(t, make_step(t, channels_last=False).step)
    for key in [k for k in out if k.startswith(("baseline_step", "step_")) and k.endswith("_ms")]:
        out[key.replace("_ms", "_images_per_s")] = per_s(t, out[key])
    free_memory(t)
    return out
