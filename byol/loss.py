"""Losses: BYOL's regression loss, the paper's optional negatives term, and SimCLR's NT-Xent."""

from __future__ import annotations

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
                   temperature: float, offset: int = 0) -> torch.Tensor:
    """Per-sample repulsive term of the paper's InfoNCE_{α,β} (appendix, "adding negatives").

    2α·ln( Σ_{j≠i} exp(S(vᵢ, vⱼ)/α) + Σ_j exp(S(vᵢ, v'ⱼ)/α) ), where S is the cosine between the
    online prediction of one image and the target projection of another; `β ×` this term added to
    `byol_loss` is the paper's loss with negatives (β = 0 is BYOL). The targets are constants.
    The targets may hold more rows than `p` (every rank's, see distributed.gather): `p`'s images are
    rows `offset … offset + len(p)` of them.
    """
    p = F.normalize(p.float(), dim=-1)
    same = p @ F.normalize(z_same_view.detach().float(), dim=-1).T / temperature
    other = p @ F.normalize(z_other_view.detach().float(), dim=-1).T / temperature
    # vᵢ against its own image in the same view is neither a positive nor a negative.
    own = torch.arange(len(p), device=p.device)
    same[own, own + offset] = float("-inf")
    return 2 * temperature * torch.logsumexp(torch.cat([same, other], dim=1), dim=1)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float, all_z1: torch.Tensor | None = None,
                 all_z2: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy, averaged over the 2B anchors of (z1, z2).

    Each anchor's positive is the other view of its image; the other 2N − 2 embeddings are negatives,
    where `all_z1`/`all_z2` (default: z1, z2) hold all N images of the global batch and z1/z2 are
    their rows `offset … offset + B` (see distributed.gather).
    """
    all_z1 = z1 if all_z1 is None else all_z1
    all_z2 = z2 if all_z2 is None else all_z2
    anchors = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    candidates = F.normalize(torch.cat([all_z1, all_z2]).float(), dim=-1)
    logits = anchors @ candidates.T / temperature
    n, total = len(z1), len(all_z1)
    own = torch.arange(n, device=z1.device) + offset
    rows = torch.arange(2 * n, device=z1.device)
    logits[rows, torch.cat([own, own + total])] = float("-inf")  # an anchor is not its own negative
    positives = torch.cat([own + total, own])
    return F.cross_entropy(logits, positives)


def negative_cosine_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = −cos(p, stopgrad(z)), per sample."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1)
