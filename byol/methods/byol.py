"""BYOL's online and target networks around any backbone.

Policies (the paper's networks and target update; docs/method.md):
- The target starts as an exact copy of the online encoder and projector. The official code draws
  it from a different seed and reports no difference; a copy is the common choice and makes the
  τ=0 and τ=1 ablations mean exactly "stop-gradient online" and "fixed random target".
- The target receives no gradient: its parameters have requires_grad=False and its forward runs
  under no_grad.
- Batch norm: the target runs in training mode like the online network (batch statistics), and
  keeps its own running statistics, updated only by its own forward passes. `update_target` moves
  parameters only; buffers are neither averaged nor copied. This is what the official code does.
- Each view goes through the networks separately, so batch-norm statistics are per view.

Ablation switches (the paper's ablations): `predictor=False` makes q the identity; `negatives_beta` adds
the appendix's contrastive term, at temperature `negatives_temperature` (the appendix's α);
`norm="group-ws"` uses GroupNorm + Weight Standardization in the heads (the backbone takes its own `norm`).
τ is the caller's: 0 makes the target the online network under stop-gradient, 1 keeps the initial random
target.
"""

from __future__ import annotations

import torch
from torch import nn

from byol.methods.learner import MomentumLearner, ViewOutputs
from byol.methods.losses import byol_loss, negatives_term
from byol.models.heads import MLPHead
from byol.runtime.distributed import gather


class BYOL(MomentumLearner):
    """`loss = learner(view1, view2)`; after each optimizer step, `learner.update_target(tau)`.

    `backbone` maps images (B, C, H, W) to features (B, D). With `feature_dim=None` D is what the backbone
    declares (`feature_dim`, timm's `num_features`), else found by a dry run on `input_shape` (default: the
    size a ViT declares, or 64×64 with the first convolution's channels); see `backbones.feature_size`.
    `learner.online_encoder` is the network to keep after training.
    """

    ablations = ("predictor", "negatives_beta")
    renamed_options = {"temperature": "negatives_temperature"}

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_dim: int = 256,
        projector_hidden_dim: int = 4096,
        predictor_hidden_dim: int = 4096,
        input_shape: tuple[int, int, int] | None = None,
        predictor: bool = True,
        negatives_beta: float = 0.0,
        negatives_temperature: float = 0.1,
        norm: str = "batch",
    ):
        super().__init__()
        feature_dim = self.attach_encoder(backbone, feature_dim, input_shape)
        self.projection_dim = projection_dim
        self.negatives_beta = negatives_beta
        self.negatives_temperature = negatives_temperature
        self.online_projector = MLPHead(feature_dim, projector_hidden_dim, projection_dim, norm)
        self.predictor = (
            MLPHead(projection_dim, predictor_hidden_dim, projection_dim, norm) if predictor else nn.Identity()
        )
        self.attach_target()

    @classmethod
    def config_problem(cls, config, given=()) -> str | None:
        if "negatives_temperature" in given and not config.negatives_beta:
            return "--negatives-temperature: it is the temperature of the contrastive term --negatives-beta turns on"
        return super().config_problem(config, given)

    def online(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(representation y, projection, prediction p) of the online network for one view."""
        representation = self.online_encoder(view)
        projection = self.online_projector(representation)
        return representation, projection, self.predictor(projection)

    @torch.no_grad()
    def target(self, view: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_encoder(view))

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, *local_views: torch.Tensor, return_outputs: bool = False
    ):
        """Symmetrised loss ℓ(p₁, z₂) + ℓ(p₂, z₁), averaged over the batch (summed over the two terms,
        as the paper does: averaging them would halve the gradient against weight decay).

        With `return_outputs=True` returns `(loss, ViewOutputs)`: the online representations and
        projections, e.g. for an online linear probe or the collapse monitor (detach them first).
        """
        self.check_views(local_views)
        y1, g1, p1 = self.online(view1)
        y2, g2, p2 = self.online(view2)
        z1 = self.target(view1)
        z2 = self.target(view2)
        per_sample = byol_loss(p1, z2) + byol_loss(p2, z1)
        if self.negatives_beta:
            # Negatives come from the whole global batch when the batch is split over ranks.
            (all_z1, offset), (all_z2, _) = gather(z1), gather(z2)
            per_sample = per_sample + self.negatives_beta * (
                negatives_term(p1, all_z1, all_z2, self.negatives_temperature, offset)
                + negatives_term(p2, all_z2, all_z1, self.negatives_temperature, offset)
            )
        loss = per_sample.mean()
        if return_outputs:
            return loss, ViewOutputs((y1, y2), (g1, g2))
        return loss
