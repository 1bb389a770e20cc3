"""One training step on a batch already on the device, in two halves.

`forward_backward` makes the views and the gradients; `apply_gradients` changes the weights. `training_step`
runs both; `graphs.GraphedStep` replays the first as a CUDA graph and runs the second eagerly. `byol bench`
times these functions, so its figures are the training loop's.
"""

from __future__ import annotations

import torch

from byol.runtime.device import autocast
from byol.runtime.distributed import unwrap


def training_step(
    learner: torch.nn.Module,
    augment: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    tau: float,
    memory_format: torch.memory_format = torch.contiguous_format,
    amp_dtype: torch.dtype | None = None,
    autocast_cache: bool = True,
):
    """One step on a batch already on the device: the views, loss, update, target EMA.

    `learner` may be wrapped in DistributedDataParallel (gradients averaged over ranks). Between backward
    and the optimizer step the learner may change gradients (`before_optimizer_step`: freezing, clipping),
    after fp16's scaler has unscaled them. Returns the loss and the learner's ViewOutputs, both still on
    the device. `graphs.GraphedStep` runs the same two halves, the first replayed as a CUDA graph, and
    warms up with this function with `autocast_cache=False`, as its capture runs.
    """
    optimizer.zero_grad(set_to_none=True)
    loss, outputs = forward_backward(learner, augment, scaler, images, memory_format, amp_dtype, autocast_cache)
    apply_gradients(learner, optimizer, scaler, tau)
    return loss, outputs


def forward_backward(
    learner: torch.nn.Module,
    augment: torch.nn.Module,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    memory_format: torch.memory_format = torch.contiguous_format,
    amp_dtype: torch.dtype | None = None,
    autocast_cache: bool = True,
):
    """The first half of a step: views, loss and gradients (added to `.grad`; the caller clears them)."""
    views = [view.contiguous(memory_format=memory_format) for view in augment(images)]
    with autocast(images.device, amp_dtype, cache=autocast_cache):
        loss, outputs = learner(*views, return_outputs=True)
    scaler.scale(loss).backward()
    return loss, outputs


def apply_gradients(
    learner: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, tau: float
) -> None:
    """The second half: gradient surgery, the optimizer step at the LR its groups hold, the target EMA at τ."""
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    inner = unwrap(learner)
    if hasattr(inner, "before_optimizer_step"):  # any module with BYOL's surface works, a Learner or not
        inner.before_optimizer_step()
    scaler.step(optimizer)
    scaler.update()
    inner.update_target(tau)
