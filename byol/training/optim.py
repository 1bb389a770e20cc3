"""LARS as used by BYOL, the parameter groups that exclude biases and norm parameters, and the
optimizers `byol train` can build by name (`OPTIMIZERS`)."""

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn


def is_excluded_from_lars(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation scales/offsets: every parameter with at most one dimension.

    The official code excludes parameters named `b` (biases) and batch-norm `scale`/`offset`;
    in PyTorch those are exactly the 0-d and 1-d parameters, whatever the module is called.
    """
    return param.ndim <= 1


def lars_param_groups(model: nn.Module, weight_decay: float, excluded_lr_multiplier: float = 1.0) -> list[dict]:
    """Two groups for any model: adapted + decayed weights, and excluded biases/norm parameters.

    Parameters with requires_grad=False (BYOL's target network) are left out. `lr_multiplier` is the
    group's share of the scheduled LR (Barlow Twins' official recipe gives biases and norm parameters
    0.0048/0.2 of the weights' LR); `byol train` applies it when it sets the LR each step.
    """
    adapted, excluded = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (excluded if is_excluded_from_lars(name, param) else adapted).append(param)
    return [
        {"params": adapted, "weight_decay": weight_decay, "lars_exclude": False, "lr_multiplier": 1.0},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True, "lr_multiplier": excluded_lr_multiplier},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) in the form BYOL's official code uses.

    For each parameter w with gradient g (groups with `lars_exclude=True` skip the first two lines):
        g ← g + weight_decay · w
        g ← g · trust_coefficient · ‖w‖ / ‖g‖      (1 when either norm is 0)
        v ← momentum · v + lr · g
        w ← w − v
    The learning rate sits inside the momentum buffer, as in the official code. With `clip_lr` (solo-learn's
    variant for SwAV, DINO, Barlow Twins and VICReg recipes) the trust ratio is capped so that no layer's
    effective LR exceeds the global one: trust ← min(trust / lr, 1).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
        clip_lr: bool = False,
    ):
        if lr < 0:
            raise ValueError(f"LARS: invalid learning rate {lr}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            lars_exclude=False,
            clip_lr=clip_lr,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient, in a handful of multi-tensor (`torch._foreach_*`)
        kernels per group and device instead of about fourteen small kernels per parameter."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_kind = defaultdict(list)  # foreach kernels take tensors of one device and dtype
            for param in group["params"]:
                if param.grad is not None:
                    by_kind[(param.device, param.dtype)].append(param)
            for params in by_kind.values():
                self._update(params, group)
        return loss

    def _update(self, params: list[torch.Tensor], group: dict) -> None:
        grads = [param.grad for param in params]
        if not group["lars_exclude"]:
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            param_norms = torch.stack(torch._foreach_norm(params))
            grad_norms = torch.stack(torch._foreach_norm(grads))
            # torch.where keeps this free of host-device synchronisation.
            trust = torch.where(
                (param_norms > 0) & (grad_norms > 0),
                group["trust_coefficient"] * param_norms / grad_norms,
                torch.ones_like(param_norms),
            )
            if group.get("clip_lr") and group["lr"] > 0:
                trust = torch.clamp(trust / group["lr"], max=1.0)
            grads = torch._foreach_mul(grads, trust.unbind())
        buffers = []
        for param in params:
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param)
            buffers.append(state["momentum_buffer"])
        torch._foreach_mul_(buffers, group["momentum"])
        torch._foreach_add_(buffers, grads, alpha=group["lr"])
        torch._foreach_sub_(params, buffers)


def _lars(groups: list[dict], momentum: float, trust_coefficient: float, clip_lr: bool) -> torch.optim.Optimizer:
    return LARS(groups, lr=0.0, momentum=momentum, trust_coefficient=trust_coefficient, clip_lr=clip_lr)


def _sgd(groups: list[dict], momentum: float, trust_coefficient: float, clip_lr: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=0.0, momentum=momentum)


def _adamw(groups: list[dict], momentum: float, trust_coefficient: float, clip_lr: bool) -> torch.optim.Optimizer:
    # β₁ = momentum; biases and norm parameters stay out of weight decay, as with LARS.
    return torch.optim.AdamW(groups, lr=0.0, betas=(momentum, 0.999))


# name → builder(param_groups, momentum, trust_coefficient, clip_lr); the LR is set by the caller every step.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"lars": _lars, "sgd": _sgd, "adamw": _adamw}


def build_optimizer(
    name: str,
    model: nn.Module,
    weight_decay: float,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
    clip_lr: bool = False,
    excluded_lr_multiplier: float = 1.0,
) -> torch.optim.Optimizer:
    """An optimizer from `OPTIMIZERS` over `lars_param_groups(model, ...)`, at LR 0."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}")
    groups = lars_param_groups(model, weight_decay, excluded_lr_multiplier)
    return OPTIMIZERS[name](groups, momentum, trust_coefficient, clip_lr)
