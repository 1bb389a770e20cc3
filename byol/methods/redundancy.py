"""Barlow Twins (Zbontar et al. 2021) and VICReg (Bardes et al. 2022), as their official code computes
them: no target, no negatives, a loss on the statistics of the batch's embeddings.

Both need the statistics of the *global* batch under torchrun. The official Barlow Twins sums the
cross-correlation over ranks with an all_reduce that autograd does not see, which leaves every gradient
1/W of the single-process one (docs/methods.md). Here every rank gathers all ranks' embeddings with an
autograd-aware gather and computes the whole-batch loss, so W ranks compute exactly what one process
computes on the global batch (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from byol.methods.learner import Learner, ViewOutputs
from byol.methods.losses import barlow_twins_loss, vicreg_loss
from byol.models.heads import mlp
from byol.runtime.distributed import gather


class _Twin(Learner):
    """Encoder + three-layer projector with batch norm, each view through them on its own."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None,
        projection_dim: int,
        projector_hidden_dim: int,
        hidden_bias: bool,
    ):
        super().__init__()
        feature_dim = self.attach_encoder(backbone, feature_dim)
        self.projection_dim = projection_dim
        dims = [feature_dim, projector_hidden_dim, projector_hidden_dim, projection_dim]
        self.online_projector = nn.Sequential(*mlp(dims, bias=hidden_bias, last_bias=False))

    def embed(self, view1: torch.Tensor, view2: torch.Tensor, local_views: tuple):
        self.check_views(local_views)
        y1, y2 = self.online_encoder(view1), self.online_encoder(view2)
        return y1, y2, self.online_projector(y1), self.online_projector(y2)


class BarlowTwins(_Twin):
    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_dim: int = 8192,
        projector_hidden_dim: int = 8192,
        lambda_offdiag: float = 0.0051,
    ):
        super().__init__(backbone, feature_dim, projection_dim, projector_hidden_dim, hidden_bias=False)
        self.lambda_offdiag = lambda_offdiag

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, *local_views: torch.Tensor, return_outputs: bool = False
    ):
        y1, y2, z1, z2 = self.embed(view1, view2, local_views)
        loss = barlow_twins_loss(gather(z1)[0], gather(z2)[0], self.lambda_offdiag)
        return (loss, ViewOutputs((y1, y2), (z1, z2))) if return_outputs else loss


class VICReg(_Twin):
    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_dim: int = 8192,
        projector_hidden_dim: int = 8192,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
    ):
        super().__init__(backbone, feature_dim, projection_dim, projector_hidden_dim, hidden_bias=True)
        self.weights = (sim_weight, var_weight, cov_weight)

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, *local_views: torch.Tensor, return_outputs: bool = False
    ):
        y1, y2, z1, z2 = self.embed(view1, view2, local_views)
        loss = vicreg_loss(z1, z2, *self.weights, all_z1=gather(z1)[0], all_z2=gather(z2)[0])
        return (loss, ViewOutputs((y1, y2), (z1, z2))) if return_outputs else loss
