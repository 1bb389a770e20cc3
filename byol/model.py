"""BYOL's online and target networks around any backbone.

Policies (SPEC "Networks" and "Target update"):
- The target starts as an exact copy of the online encoder and projector. The official code draws
  it from a different seed and reports no difference; a copy is the common choice and makes the
  τ=0 and τ=1 ablations mean exactly "stop-gradient online" and "fixed random target".
- The target receives no gradient: its parameters have requires_grad=False and its forward runs
  under no_grad.
- Batch norm: the target runs in training mode like the online network (batch statistics), and
  keeps its own running statistics, updated only by its own forward passes. `update_target` moves
  parameters only; buffers are neither averaged nor copied. This is what the official code does.
- Each view goes through the networks separately, so batch-norm statistics are per view.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .backbones import first_conv_in_channels, infer_feature_dim
from .loss import byol_loss


class MLPHead(nn.Sequential):
    """Linear → BatchNorm1d → ReLU → Linear: BYOL's projector and predictor."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class BYOL(nn.Module):
    """`loss = learner(view1, view2)`; after each optimizer step, `learner.update_target(tau)`.

    `backbone` maps images (B, C, H, W) to features (B, D). With `feature_dim=None` D is found by a
    dry run on `input_shape` (default: the backbone's first conv's channels, 64×64).
    `learner.online_encoder` is the network to keep after training.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_dim: int = 256,
        projector_hidden_dim: int = 4096,
        predictor_hidden_dim: int = 4096,
        input_shape: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        if feature_dim is None:
            if input_shape is None:
                input_shape = (first_conv_in_channels(backbone) or 3, 64, 64)
            feature_dim = infer_feature_dim(backbone, input_shape)
        self.feature_dim = feature_dim
        self.online_encoder = backbone
        self.online_projector = MLPHead(feature_dim, projector_hidden_dim, projection_dim)
        self.predictor = MLPHead(projection_dim, predictor_hidden_dim, projection_dim)
        self.target_encoder = copy.deepcopy(self.online_encoder)
        self.target_projector = copy.deepcopy(self.online_projector)
        for param in self.target_parameters():
            param.requires_grad_(False)

    def online_parameters(self) -> list[nn.Parameter]:
        """Parameters the EMA tracks, in the same order as `target_parameters`."""
        return [*self.online_encoder.parameters(), *self.online_projector.parameters()]

    def target_parameters(self) -> list[nn.Parameter]:
        return [*self.target_encoder.parameters(), *self.target_projector.parameters()]

    def online(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(representation y, prediction p) of the online network for one view."""
        representation = self.online_encoder(view)
        return representation, self.predictor(self.online_projector(representation))

    @torch.no_grad()
    def target(self, view: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_encoder(view))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, return_representations: bool = False):
        """Symmetrised loss ℓ(p₁, z₂) + ℓ(p₂, z₁), averaged over the batch (summed over the two terms,
        as the paper does: averaging them would halve the gradient against weight decay).

        With `return_representations=True` also returns the online representations (y₁, y₂), e.g.
        for an online linear probe on their detached values.
        """
        y1, p1 = self.online(view1)
        y2, p2 = self.online(view2)
        z1 = self.target(view1)
        z2 = self.target(view2)
        loss = (byol_loss(p1, z2) + byol_loss(p2, z1)).mean()
        if return_representations:
            return loss, (y1, y2)
        return loss

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """ξ ← τ·ξ + (1 − τ)·θ for every encoder and projector parameter, in one fused foreach call."""
        target = self.target_parameters()
        online = self.online_parameters()
        torch._foreach_mul_(target, tau)
        torch._foreach_add_(target, online, alpha=1 - tau)
