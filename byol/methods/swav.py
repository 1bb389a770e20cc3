"""SwAV (Caron et al. 2020), as facebookresearch/swav computes it.

Encoder → MLP head → L2-normalised embedding z → scores against unit-norm prototypes. For each of the two
global crops, Sinkhorn-Knopp turns its scores (with a queue of earlier embeddings, once the queue is full)
into equipartitioned soft codes, which every other crop predicts through softmax(scores / T). Prototypes
are renormalised before every forward and frozen (their gradient dropped) for the first epochs. Under
torchrun the Sinkhorn sums run over all ranks, so the codes are those of the global batch; the queue is
each rank's own, as in the official code, and the checkpoint holds every rank's (docs/methods.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from byol.methods.learner import Learner, ViewOutputs
from byol.methods.losses import sinkhorn, swapped_prediction
from byol.methods.multicrop import encode_by_size
from byol.models.heads import MLPHead
from byol.runtime.distributed import all_reduce_sum, rank_and_world


class SwAV(Learner):
    accepts_local_views = True
    rank_local_state = ("queue",)  # each rank's own: the run loop gathers them into the checkpoint
    ASSIGNED = 2  # codes come from the two global crops only

    @property
    def graph_problem(self) -> str | None:
        if self.queue_size:
            return (
                "the queue (--queue-size) is created and counted in Python during the forward, which a "
                "replayed CUDA graph would not do: use --queue-size 0, or leave out --cuda-graphs"
            )
        return None

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_dim: int = 128,
        projector_hidden_dim: int = 2048,
        prototypes: int = 3000,
        temperature: float = 0.1,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        queue_size: int = 0,
        queue_start_epoch: float = 15.0,
        freeze_head_epochs: float = 1.0,
    ):
        super().__init__()
        feature_dim = self.attach_encoder(backbone, feature_dim)
        self.projection_dim, self.temperature = projection_dim, temperature
        self.epsilon, self.iterations = sinkhorn_epsilon, sinkhorn_iterations
        self.queue_size, self.queue_start_epoch, self.freeze_epochs = queue_size, queue_start_epoch, freeze_head_epochs
        self.online_projector = MLPHead(feature_dim, projector_hidden_dim, projection_dim)
        self.prototypes = nn.Linear(projection_dim, prototypes, bias=False)
        # A plain attribute, not a buffer: DDP would make every rank's a copy of rank 0's when it wraps a
        # learner whose queue already exists (a resumed run). `_apply` below moves it with the module.
        self.queue: torch.Tensor | None = None
        self.queued = 0  # embeddings written since the queue was made; a Python count, so no device sync

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, *local_views: torch.Tensor, return_outputs: bool = False
    ):
        views = [view1, view2, *local_views]
        if self.training:
            with torch.no_grad():
                self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        representations = encode_by_size(self.online_encoder, views)
        embeddings = F.normalize(self.online_projector(torch.cat(representations)), dim=1)
        scores = self.prototypes(embeddings).chunk(len(views))
        embeddings = embeddings.chunk(len(views))
        updating = self.updating_state()
        if updating:
            self._start_queue(len(view1), embeddings[0])
        loss = 0.0
        for i in range(self.ASSIGNED):
            codes = self._codes(i, scores[i], embeddings[i], updating)
            loss = loss + swapped_prediction(codes, list(scores), i, self.temperature)
        loss = loss / self.ASSIGNED
        if return_outputs:
            return loss, ViewOutputs((representations[0], representations[1]), (embeddings[0], embeddings[1]))
        return loss

    @torch.no_grad()
    def _codes(self, crop: int, scores: torch.Tensor, embeddings: torch.Tensor, updating: bool) -> torch.Tensor:
        """Sinkhorn codes of one assigned crop's batch, solved together with the queue once it is full."""
        scores = scores.detach()
        if self.queue is not None:
            if self.queued >= self.queue.shape[1]:
                scores = torch.cat([self.queue[crop] @ self.prototypes.weight.T, scores])
            if updating:  # shift, then write this batch at the head: it never meets itself
                self.queue[crop, len(embeddings) :] = self.queue[crop, : -len(embeddings)].clone()
                self.queue[crop, : len(embeddings)] = embeddings.detach().to(self.queue.dtype)
                if crop == self.ASSIGNED - 1:
                    self.queued += len(embeddings)
        _, world_size = rank_and_world()
        return sinkhorn(scores, self.epsilon, self.iterations, all_reduce_sum, world_size)[-len(embeddings) :]

    def _start_queue(self, local_batch: int, like: torch.Tensor) -> None:
        """The queue appears at `queue_start_epoch`: `queue_size` embeddings over all ranks, a multiple of
        the global batch, each rank holding its share."""
        if self.queue is not None or not self.queue_size or self.epoch < self.queue_start_epoch:
            return
        _, world_size = rank_and_world()
        per_rank = (self.queue_size - self.queue_size % (local_batch * world_size)) // world_size
        if per_rank:
            self.queue = torch.zeros(self.ASSIGNED, per_rank, like.shape[1], device=like.device)
            self.queued = 0

    # The queue, once it exists, is saved as (ranks, 2, length, D), this process's alone as rank 1 of 1 (the
    # run loop concatenates every rank's under torchrun), beside the count of embeddings written. Its size is
    # only known at its start, so it is not an ordinary buffer, and the state_dict stays tensors only.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.queue is not None:
            destination[prefix + "queue"] = (self.queue if keep_vars else self.queue.detach()).unsqueeze(0)
            destination[prefix + "queue_filled"] = torch.tensor([self.queued])

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.queue is not None:
            self.queue = fn(self.queue)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Each rank takes back its own queue when the checkpoint holds one per rank of this run; otherwise
        (another number of processes, only rank 0's queue, a checkpoint from before) it starts empty and refills."""
        queue, filled = state_dict.pop(prefix + "queue", None), state_dict.pop(prefix + "queue_filled", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        rank, world_size = rank_and_world()
        self.queue, self.queued = None, 0
        if queue is not None and filled is not None and queue.ndim == 4 and len(queue) == world_size:
            self.queue, self.queued = queue[rank].to(self.prototypes.weight.device, copy=True), int(filled[0])

    def before_optimizer_step(self) -> None:
        super().before_optimizer_step()
        if self.epoch < self.freeze_epochs:
            self.prototypes.weight.grad = None  # no update, no momentum, no weight decay for them yet
