"""SimSiam (Chen & He 2021): BYOL without the moving-average target."""

from __future__ import annotations

import torch

from byol.methods.learner import Learner, ViewOutputs
from byol.methods.losses import negative_cosine_loss
from byol.models.heads import MLPHead


class SimSiam(Learner):
    """The online projection of the other view, under stop-gradient, is the target. Loss
    ½·D(p₁, z₂) + ½·D(p₂, z₁), D = −cosine. Projector and predictor have BYOL's shapes, so the
    comparison isolates the missing EMA target."""

    def __init__(
        self,
        backbone: torch.nn.Module,
        feature_dim: int | None = None,
        projection_dim: int = 256,
        projector_hidden_dim: int = 4096,
        predictor_hidden_dim: int = 4096,
        norm: str = "batch",
    ):
        super().__init__()
        feature_dim = self.attach_encoder(backbone, feature_dim)
        self.projection_dim = projection_dim
        self.online_projector = MLPHead(feature_dim, projector_hidden_dim, projection_dim, norm)
        self.predictor = MLPHead(projection_dim, predictor_hidden_dim, projection_dim, norm)

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, *local_views: torch.Tensor, return_outputs: bool = False
    ):
        self.check_views(local_views)
        y1, y2 = self.online_encoder(view1), self.online_encoder(view2)
        g1, g2 = self.online_projector(y1), self.online_projector(y2)
        p1, p2 = self.predictor(g1), self.predictor(g2)
        loss = 0.5 * (negative_cosine_loss(p1, g2) + negative_cosine_loss(p2, g1)).mean()
        return (loss, ViewOutputs((y1, y2), (g1, g2))) if return_outputs else loss
