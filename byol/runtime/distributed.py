"""Many processes, one run: torchrun's environment, the process group, collectives and DDP.

Under `torchrun` every process runs the same `byol train`; this module is what makes them one job.
Policies:
- The configured batch size is the *global* batch: each of W ranks takes a B/W slice of the same
  global batch a single process would use, so the data order does not depend on W.
- Batch norm is synchronized across ranks by default: `byol.models.syncbn`.
- Contrastive terms (SimCLR, BYOL's negatives ablation) see the whole global batch as negatives
  through `gather`, whose backward sums the gradient over ranks.
Outside torchrun (WORLD_SIZE unset or 1) every function here is a no-op, so one code path serves both.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from byol.runtime.errors import UserError

_DDP_OPTIONS = inspect.signature(DistributedDataParallel).parameters


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def main_decides(self, decide):
        """`decide()` on rank 0, and its answer on every rank: its value, or the UserError it raised
        (so every rank stops with the same one-line error instead of waiting for rank 0)."""
        outcome = None
        if self.is_main:
            try:
                outcome = ("value", decide())
            except UserError as error:
                outcome = ("error", str(error))
        kind, value = broadcast_object(outcome)
        if kind == "error":
            raise UserError(value)
        return value

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. a dataset download), the others after it has finished."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def launched_world_size() -> int:
    """The world size torchrun announced in the environment (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_as_main() -> bool:
    """Whether this process is rank 0 of a torchrun job, or not launched by torchrun at all."""
    return os.environ.get("RANK", "0") == "0"


def elastic_restart_count() -> int:
    """How many times torchrun has restarted this job's workers (0 on the first attempt)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process drives its own GPU: cuda → cuda:LOCAL_RANK."""
    if device.type == "cuda" and launched_world_size() > 1 and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def setup(device: torch.device) -> Context:
    """Join torchrun's process group (nccl on CUDA, gloo otherwise); a 1-process Context without it."""
    if dist.is_available() and dist.is_initialized():  # the caller's own group: use it, leave it to them
        return Context(dist.get_rank(), dist.get_world_size())
    if launched_world_size() <= 1:
        return Context()
    # torchrun keeps its key-value store across elastic restarts; without a key space per attempt a new
    # worker can read a dead worker's address and fail to connect (seen with gloo, about 1 run in 3).
    store, rank, world_size = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"byol/attempt{elastic_restart_count()}", store)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", store=store, rank=rank, world_size=world_size, device_id=device)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    return Context(dist.get_rank(), dist.get_world_size(), owns_group=True)


def teardown(context: Context) -> None:
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def _all_reduced(tensor: torch.Tensor, op: str) -> torch.Tensor:
    if not is_distributed():  # before touching dist.ReduceOp: builds without torch.distributed lack it
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy); the tensor itself outside torchrun. Likewise the two below."""
    return _all_reduced(tensor, "SUM")


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    return _all_reduced(tensor, "MAX")


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(tensor) / rank_and_world()[1]


def broadcast_object(value):
    """Rank 0's `value` on every rank (pickled between our own processes, never read from a file)."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is all_reduce(SUM) of the incoming gradients: every rank's loss
    depends on every rank's contribution, so each contribution receives the sum of their gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks; the tensor itself outside torchrun."""
    return _SumOverRanks.apply(tensor) if is_distributed() else tensor


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        ctx.rank, ctx.rows = dist.get_rank(), len(tensor)
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        # Every rank's loss used every row: this rank's rows get the sum of all ranks' gradients.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(rows of all ranks concatenated in rank order, offset of this rank's rows). Differentiable.

    Every rank must pass the same number of rows (true here: the global batch is split evenly).
    """
    if not is_distributed():
        return tensor, 0
    return _Gather.apply(tensor), dist.get_rank() * len(tensor)


def wrap(learner: nn.Module, device: torch.device) -> nn.Module:
    """DDP around the learner when there are several ranks; the learner itself otherwise. Buffers are
    re-broadcast from rank 0 each step only when some batch norm keeps per-process statistics."""
    if not is_distributed():
        return learner
    per_process_norm = any(
        isinstance(m, _BatchNorm) and not (isinstance(m, nn.SyncBatchNorm) or getattr(m, "synchronised", False))
        for m in learner.modules()
    )
    # torch 2.14 renamed the switch; both leave the initial broadcast of rank 0's buffers in place.
    switch = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_OPTIONS else "broadcast_buffers"
    return DistributedDataParallel(
        learner, device_ids=[device.index] if device.type == "cuda" else None, **{switch: per_process_norm}
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The learner inside a DDP wrapper (its update_target, online_encoder, state_dict names)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def average_gradients(parameters) -> None:
    """Mean of each gradient over ranks, for small modules outside DDP (the online probe)."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
