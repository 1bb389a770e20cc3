"""Collapse monitor: two cheap numbers that tell a healthy representation from a collapsed one.

- embedding_std: the per-dimension standard deviation of the L2-normalised projections, averaged
  over dimensions. Spread evenly over the unit sphere in d dimensions it is ≈ 1/√d; every image
  mapped to one point gives 0.
- effective_rank (RankMe, Garrido et al. 2023): exp of the entropy of the normalised singular
  values of the (batch × features) representation matrix: ≈ min(batch, features) for isotropic
  features, 1 when all images share one direction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Below a tenth of the healthy spread, or fewer than two effective dimensions, a run has collapsed
# (the paper's collapsed ablations sit near 0 accuracy; healthy runs stay far above both marks).
COLLAPSE_STD_FRACTION = 0.1
COLLAPSE_RANK = 2.0


@torch.no_grad()
def embedding_std(projection: torch.Tensor) -> float:
    z = F.normalize(projection.detach().float(), dim=-1)
    return z.std(dim=0).mean().item()


@torch.no_grad()
def effective_rank(representation: torch.Tensor, eps: float = 1e-7) -> float:
    singular = torch.linalg.svdvals(representation.detach().float())
    p = singular / singular.sum().clamp_min(eps) + eps
    return math.exp(-(p * p.log()).sum().item())


def collapse_metrics(projection: torch.Tensor, representation: torch.Tensor) -> dict:
    """The two numbers, and the embedding's width, which the std is judged against (1/√d when healthy)."""
    return {
        "embedding_std": embedding_std(projection),
        "effective_rank": effective_rank(representation),
        "embedding_dim": projection.shape[-1],
    }


def is_collapsed(metrics: dict, projection_dim: int) -> bool:
    healthy_std = 1 / math.sqrt(projection_dim)
    return metrics["embedding_std"] < COLLAPSE_STD_FRACTION * healthy_std or metrics["effective_rank"] < COLLAPSE_RANK
