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


def negatives_term(
    p: torch.Tensor, z_same_view: torch.Tensor, z_other_view: torch.Tensor, temperature: float, offset: int = 0
) -> torch.Tensor:
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


def nt_xent_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    all_z1: torch.Tensor | None = None,
    all_z2: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
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


# ---------------------------------------------------------------- the methods beside BYOL (docs/methods.md)


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: each query's positive is its own key, its negatives the queue (C × K) of keys from
    earlier batches; cross-entropy with the positive at index 0, batch mean. Keys and queue are constants."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.detach().float()
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each feature to zero mean and unit (biased) variance over the batch: a BatchNorm1d without affine
    parameters in training mode, as Barlow Twins applies it."""
    z = z.float()
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 0.0051) -> torch.Tensor:
    """Σᵢ(1 − Cᵢᵢ)² + λ·Σ_{i≠j} Cᵢⱼ², C = the cross-correlation of the batch-standardised z1 and z2
    (C = ẑ1ᵀẑ2 / N). The whole batch: under torchrun the method gathers every rank's rows first."""
    c = standardise(z1).T @ standardise(z2) / len(z1)
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diagonal + lambda_offdiag * off_diagonal


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    all_z1: torch.Tensor | None = None,
    all_z2: torch.Tensor | None = None,
) -> torch.Tensor:
    """VICReg as its official code computes it: sim·MSE(z1, z2) + var·(hinge on each feature's std)/2 per
    branch + cov·(sum of squared off-diagonal covariances)/D per branch. The invariance term is on this
    process's rows; variance and covariance on `all_z1`/`all_z2` (every rank's rows; default z1, z2)."""
    all_z1 = z1 if all_z1 is None else all_z1
    all_z2 = z2 if all_z2 is None else all_z2
    invariance = F.mse_loss(z1.float(), z2.float())
    variance = covariance = 0.0
    for z in (all_z1.float(), all_z2.float()):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + 1e-4)
        variance = variance + F.relu(1 - std).mean() / 2
        cov = z.T @ z / (len(z) - 1)
        covariance = covariance + (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / z.shape[1]
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, all_reduce=None, world_size: int = 1
) -> torch.Tensor:
    """SwAV's soft assignments Q (n × K) of n samples to K prototypes from their scores, equipartitioned
    by `iterations` rounds of Sinkhorn-Knopp; each row sums to 1. Under torchrun, `all_reduce` (a sum over
    the `world_size` ranks) makes the prototype marginals those of the global batch, as the official code
    does; each sample's own normalisation stays local."""
    all_reduce = all_reduce or (lambda t: t)
    q = torch.exp(scores.float() / epsilon).T  # K × n
    batch = q.shape[1] * world_size
    prototypes = q.shape[0]
    q /= all_reduce(q.sum())
    for _ in range(iterations):
        q /= all_reduce(q.sum(dim=1, keepdim=True))
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    return (q * batch).T


def swav_loss(
    scores_per_crop: list[torch.Tensor],
    n_assigned: int = 2,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
) -> torch.Tensor:
    """SwAV's swapped prediction in one process, without a queue: for each of the first `n_assigned` crops,
    Sinkhorn codes from its scores predict, through softmax(scores / T), every other crop; averaged over
    the other crops, then over the assigned ones. (byol.SwAV adds the queue and the cross-rank sums.)"""
    loss = 0.0
    for i in range(n_assigned):
        codes = sinkhorn(scores_per_crop[i].detach(), epsilon, iterations)
        loss = loss + swapped_prediction(codes, scores_per_crop, i, temperature)
    return loss / n_assigned


def swapped_prediction(
    codes: torch.Tensor, scores_per_crop: list[torch.Tensor], assigned: int, temperature: float
) -> torch.Tensor:
    """−mean_b Σ_k codes · log softmax(scores_v / T), averaged over every crop v other than `assigned`."""
    terms = [
        -(codes * F.log_softmax(scores.float() / temperature, dim=1)).sum(dim=1).mean()
        for v, scores in enumerate(scores_per_crop)
        if v != assigned
    ]
    return sum(terms) / len(terms)


def dino_loss(
    student_per_crop: list[torch.Tensor],
    teacher_per_crop: list[torch.Tensor],
    center: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> torch.Tensor:
    """DINO's cross-entropy between the centred, sharpened teacher distribution of each global crop and
    the student's distribution of every other crop, averaged over all such pairs."""
    targets = [F.softmax((t.detach().float() - center) / teacher_temperature, dim=1) for t in teacher_per_crop]
    log_probs = [F.log_softmax(s.float() / student_temperature, dim=1) for s in student_per_crop]
    terms = [
        -(target * log_probs[v]).sum(dim=1).mean()
        for i, target in enumerate(targets)
        for v in range(len(log_probs))
        if v != i
    ]
    return sum(terms) / len(terms)
