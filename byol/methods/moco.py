"""MoCo v2 (Chen et al. 2020, "Improved baselines"), as facebookresearch/moco computes it.

A query encoder + MLP head (no batch norm), a key encoder that is its EMA, and a queue of K keys from
earlier batches as negatives. The loss is the official one-direction InfoNCE: queries from view 1,
keys from view 2. Under torchrun each rank's keys are gathered before they are queued, so the queue is
the same on every rank; batch norm is synchronised over the global batch, so there is no shuffle-BN
(docs/methods.md: a deviation, as solo-learn's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from byol.methods.learner import MomentumLearner, ViewOutputs
from byol.methods.losses import moco_loss
from byol.models.heads import mlp
from byol.runtime.distributed import gather


class MoCo(MomentumLearner):
    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_dim: int = 128,
        projector_hidden_dim: int = 2048,
        queue_size: int = 65536,
        temperature: float = 0.2,
    ):
        super().__init__()
        feature_dim = self.attach_encoder(backbone, feature_dim)
        self.projection_dim, self.temperature = projection_dim, temperature
        self.online_projector = nn.Sequential(*mlp([feature_dim, projector_hidden_dim, projection_dim], norm=None))
        self.attach_target()
        # Keys from earlier batches, identical on every rank; part of the checkpoint.
        self.register_buffer("queue", F.normalize(torch.randn(projection_dim, queue_size), dim=0))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @classmethod
    def config_problem(cls, config, given=()) -> str | None:
        if not config.queue_size or config.queue_size % config.batch_size:
            return (
                f"--queue-size {config.queue_size}: --method mocov2 needs a queue that is a multiple of "
                f"--batch-size {config.batch_size}"
            )
        return super().config_problem(config, given)

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, *local_views: torch.Tensor, return_outputs: bool = False
    ):
        self.check_views(local_views)
        y1 = self.online_encoder(view1)
        q = self.online_projector(y1)
        with torch.no_grad():
            y2 = self.target_encoder(view2)
            k = self.target_projector(y2)
        loss = moco_loss(q, k, self.queue.clone(), self.temperature)  # a copy: enqueue() changes the queue below
        if self.updating_state():
            self.enqueue(F.normalize(k.float(), dim=1))
        return (loss, ViewOutputs((y1, y2), (q, k))) if return_outputs else loss

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """The global batch's keys replace the oldest in the queue (after the loss used the queue)."""
        keys = gather(keys)[0]
        size = self.queue.shape[1]
        if size % len(keys):
            raise ValueError(f"the queue ({size} keys) is not a multiple of the global batch ({len(keys)})")
        # Tensor indices, not int(pointer): no host-device sync in the step.
        slots = (self.queue_pointer + torch.arange(len(keys), device=keys.device)) % size
        self.queue.index_copy_(1, slots, keys.T.to(self.queue.dtype))
        self.queue_pointer.add_(len(keys)).remainder_(size)
