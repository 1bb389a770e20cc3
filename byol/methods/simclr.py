"""SimCLR (Chen et al. 2020): one network, a projector, NT-Xent over the 2B views of a batch."""

from __future__ import annotations

import torch

from byol.methods.learner import Learner, ViewOutputs
from byol.methods.losses import nt_xent_loss
from byol.models.heads import MLPHead
from byol.runtime.distributed import gather


class SimCLR(Learner):
    """The projector has BYOL's shape (d → hidden → projection_dim) so only the objective differs."""

    def __init__(
        self,
        backbone: torch.nn.Module,
        feature_dim: int | None = None,
        projection_dim: int = 256,
        projector_hidden_dim: int = 4096,
        temperature: float = 0.1,
        norm: str = "batch",
    ):
        super().__init__()
        feature_dim = self.attach_encoder(backbone, feature_dim)
        self.projection_dim = projection_dim
        self.temperature = temperature
        self.online_projector = MLPHead(feature_dim, projector_hidden_dim, projection_dim, norm)

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, *local_views: torch.Tensor, return_outputs: bool = False
    ):
        self.check_views(local_views)
        y1, y2 = self.online_encoder(view1), self.online_encoder(view2)
        g1, g2 = self.online_projector(y1), self.online_projector(y2)
        # Negatives come from the whole global batch when the batch is split over ranks.
        (all_g1, offset), (all_g2, _) = gather(g1), gather(g2)
        loss = nt_xent_loss(g1, g2, self.temperature, all_g1, all_g2, offset)
        return (loss, ViewOutputs((y1, y2), (g1, g2))) if return_outputs else loss
