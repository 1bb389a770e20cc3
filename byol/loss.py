"""The BYOL regression loss."""

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
