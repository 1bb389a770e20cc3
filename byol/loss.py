"""Losses: BYOL's regression loss, the paper's optional negatives term, and SimCLR's NT-Xent."""

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample 2 - 2·cos(p, z), i.e. the squared distance of the L2-normalised vectors.

    `z` is the target projection and is treated as a constant (stop-gradient), as in the paper.
    Computed in float32 so bf16 autocast cannot swallow the small differences near convergence.
    No reduction: the caller sums the two symmetric terms and averages over the batch.
    """
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.detach().float(), dim=-1)
    return 2 - 2 * (p * z).sum(dim=-1)


def negatives_term(p: torch.Tensor, z_same_view: torch.Tensor, z_other_view: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """Per-sample repulsive term of the paper's InfoNCE_{α,β} (appendix, "adding negatives").

    2α·ln( Σ_{j≠i} exp(S(vᵢ, vⱼ)/α) + Σ_j exp(S(vᵢ, v'ⱼ)/α) ), where S is the cosine between the
    online prediction of one image and the target projection of another; `β ×` this term added to
    `byol_loss` is the paper's loss with negatives (β = 0 is BYOL). The targets are constants.
    """
    p = F.normalize(p.float(), dim=-1)
    same = p @ F.normalize(z_same_view.detach().float(), dim=-1).T / temperature
    other = p @ F.normalize(z_other_view.detach().float(), dim=-1).T / temperature
    # vᵢ against its own image in the same view is neither a positive nor a negative.
    same = same.masked_fill(torch.eye(len(p), dtype=torch.bool, device=p.device), float("-inf"))
    return 2 * temperature * torch.logsumexp(torch.cat([same, other], dim=1), dim=1)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy, averaged over all 2B anchors.

    Each anchor's positive is the other view of its image; the other 2B − 2 embeddings are negatives.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    logits = z @ z.T / temperature
    n = len(z1)
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def negative_cosine_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = −cos(p, stopgrad(z)), per sample."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1)
