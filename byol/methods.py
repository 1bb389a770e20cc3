"""Baselines beside BYOL, sharing its backbones, heads, augmentations, optimizer and evaluation.

Every learner has the same small surface, which is all the training loop uses:
    loss = learner(view1, view2)                       # or (loss, ViewOutputs) with return_outputs=True
    learner.update_target(tau)                         # after each optimizer step; a no-op without a target
    learner.online_encoder, learner.feature_dim, learner.projection_dim
A new method (Barlow Twins, MoCo v2, VICReg…) is one more class here and one line in `METHODS`
(name → builder); BYOL's own code in model.py does not change.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import gather
from .loss import negative_cosine_loss, nt_xent_loss
from .model import BYOL, MLPHead, ViewOutputs


class SimCLR(nn.Module):
    """Chen et al. 2020: one network, a projector, NT-Xent over the 2B views of a batch.

    The projector has BYOL's shape (d → hidden → projection_dim) so only the objective differs.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, projection_dim: int = 256,
                 projector_hidden_dim: int = 4096, temperature: float = 0.1, norm: str = "batch"):
        super().__init__()
        self.feature_dim = feature_dim
        self.projection_dim = projection_dim
        self.temperature = temperature
        self.online_encoder = backbone
        self.online_projector = MLPHead(feature_dim, projector_hidden_dim, projection_dim, norm)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, return_outputs: bool = False):
        y1, y2 = self.online_encoder(view1), self.online_encoder(view2)
        g1, g2 = self.online_projector(y1), self.online_projector(y2)
        # Negatives come from the whole global batch when the batch is split over ranks.
        (all_g1, offset), (all_g2, _) = gather(g1), gather(g2)
        loss = nt_xent_loss(g1, g2, self.temperature, all_g1, all_g2, offset)
        return (loss, ViewOutputs((y1, y2), (g1, g2))) if return_outputs else loss

    def update_target(self, tau: float) -> None:
        """SimCLR has no target network."""


class SimSiam(nn.Module):
    """Chen & He 2021: BYOL without the moving-average target; the online projection of the other
    view, under stop-gradient, is the target. Loss ½·D(p₁, z₂) + ½·D(p₂, z₁), D = −cosine.

    Projector and predictor have BYOL's shapes, so the comparison isolates the missing EMA target.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, projection_dim: int = 256,
                 projector_hidden_dim: int = 4096, predictor_hidden_dim: int = 4096, norm: str = "batch"):
        super().__init__()
        self.feature_dim = feature_dim
        self.projection_dim = projection_dim
        self.online_encoder = backbone
        self.online_projector = MLPHead(feature_dim, projector_hidden_dim, projection_dim, norm)
        self.predictor = MLPHead(projection_dim, predictor_hidden_dim, projection_dim, norm)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, return_outputs: bool = False):
        y1, y2 = self.online_encoder(view1), self.online_encoder(view2)
        g1, g2 = self.online_projector(y1), self.online_projector(y2)
        p1, p2 = self.predictor(g1), self.predictor(g2)
        loss = 0.5 * (negative_cosine_loss(p1, g2) + negative_cosine_loss(p2, g1)).mean()
        return (loss, ViewOutputs((y1, y2), (g1, g2))) if return_outputs else loss

    def update_target(self, tau: float) -> None:
        """SimSiam has no target network."""


def _byol(backbone, feature_dim, *, projection_dim, projector_hidden_dim, predictor_hidden_dim, predictor,
          negatives_beta, temperature, norm):
    return BYOL(backbone, feature_dim, projection_dim, projector_hidden_dim, predictor_hidden_dim,
                predictor=predictor, negatives_beta=negatives_beta, temperature=temperature, norm=norm)


def _simclr(backbone, feature_dim, *, projection_dim, projector_hidden_dim, temperature, norm, **_):
    return SimCLR(backbone, feature_dim, projection_dim, projector_hidden_dim, temperature, norm)


def _simsiam(backbone, feature_dim, *, projection_dim, projector_hidden_dim, predictor_hidden_dim, norm, **_):
    return SimSiam(backbone, feature_dim, projection_dim, projector_hidden_dim, predictor_hidden_dim, norm)


# name → builder(backbone, feature_dim, **options); each builder takes the options its method uses.
METHODS = {"byol": _byol, "simclr": _simclr, "simsiam": _simsiam}


def build_method(method: str, backbone: nn.Module, feature_dim: int, *, projection_dim: int = 256,
                 projector_hidden_dim: int = 4096, predictor_hidden_dim: int = 4096, predictor: bool = True,
                 negatives_beta: float = 0.0, temperature: float = 0.1, norm: str = "batch") -> nn.Module:
    """A learner by name from `METHODS`, around `backbone` (which maps images to `feature_dim` features)."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    return METHODS[method](backbone, feature_dim, projection_dim=projection_dim,
                           projector_hidden_dim=projector_hidden_dim, predictor_hidden_dim=predictor_hidden_dim,
                           predictor=predictor, negatives_beta=negatives_beta, temperature=temperature, norm=norm)
