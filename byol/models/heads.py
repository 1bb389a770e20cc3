"""Heads the methods put on top of the encoder: MLPs of each method's shape, and DINO's head.

Every MLP is built by `mlp`. BYOL's projector and predictor (`MLPHead`, also SimCLR's, SimSiam's and
SwAV's) are Linear → BN → ReLU → Linear. The others, as each method's official code builds them
(docs/methods.md): MoCo v2 Linear → ReLU → Linear without batch norm; Barlow Twins and VICReg three layers
with batch norm (the last without a bias); DINO three layers with GELU, a bottleneck, L2 normalisation and
a weight-normalised last layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from byol.models.norm import WSLinear, check_norm, group_norm


def relu() -> nn.Module:
    return nn.ReLU(inplace=True)  # in place: the hidden activation is not kept twice for backward


def mlp(
    dims: list[int], norm: str | None = "batch", activation=relu, bias: bool = True, last_bias: bool = True
) -> list[nn.Module]:
    """The layers of Linear → norm → activation between each pair of `dims`, the last Linear alone. `norm`:
    "batch" (BatchNorm1d), "group-ws" (weight-standardised Linear + GroupNorm) or None."""
    group_ws = norm is not None and check_norm(norm) == "group-ws"
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        linear = nn.Linear if last or not group_ws else WSLinear
        layers.append(linear(d_in, d_out, bias=last_bias if last else bias))
        if not last:
            if norm is not None:
                layers.append(group_norm(d_out) if group_ws else nn.BatchNorm1d(d_out))
            layers.append(activation())
    return layers


class MLPHead(nn.Sequential):
    """Linear → BatchNorm1d → ReLU → Linear: BYOL's projector and predictor.

    With `norm="group-ws"` the first layer is weight-standardised and the norm is a GroupNorm.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, norm: str = "batch"):
        super().__init__(*mlp([in_dim, hidden_dim, out_dim], norm))


class DINOHead(nn.Module):
    """Linear → GELU → Linear → GELU → Linear to a bottleneck, L2-normalised, then a weight-normalised
    Linear to `out_dim` prototypes whose norm (weight_g) is fixed at 1: logits are cosine similarities."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, out_dim: int = 65536):
        super().__init__()
        self.mlp = nn.Sequential(*mlp([in_dim, hidden_dim, hidden_dim, bottleneck_dim], None, nn.GELU))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
