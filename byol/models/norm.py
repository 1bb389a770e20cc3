"""Normalisation choices: batch norm (the paper's default) or GroupNorm + Weight Standardization.

The paper's ablation replaces every batch norm by GroupNorm with weight-standardised layers before it
(73.9 vs 74.3 top-1), showing BYOL does not need batch statistics to avoid collapse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from byol.models.conv import conv2d, conv_like

NORMS = ("batch", "group-ws")
# 16 divides the channel count of every stage down to quarter width (16 channels in the stem).
GROUPS = 16


def _standardize(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    flat = weight.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    var = flat.var(dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).view_as(weight)


class WSConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised (zero mean, unit variance per output channel) on use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, _standardize(self.weight), self.bias, self)


class WSLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _standardize(self.weight), self.bias)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(GROUPS, channels), channels)


def weight_standardize_(module: nn.Module) -> nn.Module:
    """Swap every Conv2d in `module` for a WSConv2d holding the same parameters; in place."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            ws = conv_like(child, WSConv2d)
            ws.weight = child.weight
            ws.bias = child.bias
            setattr(module, name, ws)
        else:
            weight_standardize_(child)
    return module


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm '{norm}'; choose one of {', '.join(NORMS)}")
    return norm
