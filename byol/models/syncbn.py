"""Synchronised batch norm: every rank normalises with the statistics of the global batch.

Batch norm is synchronized across ranks by default (the paper's cross-replica BN), in the online
and the target networks: W ranks × B/W then compute what one process computes with batch B. The
`SyncBatchNorm` below does it on every device with one autograd-aware all-reduce per call.
`torch.nn.SyncBatchNorm` refuses CPU tensors, and on CUDA it masks ranks with an empty batch by a
boolean index, a host-device sync per call; here every rank always has the same per-process batch,
so no mask is needed (torch's stays available: `convert_sync_batchnorm(..., implementation="torch")`).
Because synchronized running statistics agree on every rank, DDP does not re-broadcast buffers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from byol.runtime.distributed import is_distributed, sum_over_ranks
from byol.runtime.logs import log


class _FusedSyncBatchNorm(torch.autograd.Function):
    """Batch norm over the global batch with torch's fused CUDA kernels (per-rank Welford statistics, an
    all-gather, their combination, one normalising kernel; two reductions and one kernel backward), without
    the boolean mask torch's own SyncBatchNorm drops empty ranks with: that mask is a host sync per call,
    and here every rank always has the same per-process batch. CUDA and NCCL only."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps: float, momentum: float):
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous()
        channels = x.shape[1]
        mean, invstd = torch.batch_norm_stats(x, eps)
        count = torch.full((1,), x.numel() // channels, dtype=mean.dtype, device=x.device)
        gathered = torch.empty(dist.get_world_size(), 2 * channels + 1, dtype=mean.dtype, device=x.device)
        dist.all_gather_into_tensor(gathered, torch.cat([mean, invstd, count]))
        means, invstds, counts = gathered.split([channels, channels, 1], dim=1)
        counts = counts.reshape(-1).to(running_mean.dtype if running_mean is not None else mean.dtype)
        mean, invstd = torch.batch_norm_gather_stats_with_counts(
            x, means, invstds, running_mean, running_var, momentum, eps, counts
        )
        ctx.save_for_backward(x, weight, mean, invstd, counts.to(torch.int32))
        return torch.batch_norm_elemt(x, weight, bias, mean, invstd, eps)

    @staticmethod
    def backward(ctx, grad_out):
        if not grad_out.is_contiguous(memory_format=torch.channels_last):
            grad_out = grad_out.contiguous()
        x, weight, mean, invstd, counts = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        sum_dy, sum_dy_xmu, grad_weight, grad_bias = torch.batch_norm_backward_reduce(
            grad_out,
            x,
            mean,
            invstd,
            weight,
            needs_input,
            needs_weight and weight is not None,
            needs_bias and weight is not None,
        )
        grad_input = None
        if needs_input:
            channels = sum_dy.shape[0]
            sums = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(sums)  # the input's gradient depends on every rank's part of the batch
            sum_dy, sum_dy_xmu = sums.split(channels)
            if weight is not None and weight.dtype != mean.dtype:
                weight = weight.to(mean.dtype)
            grad_input = torch.batch_norm_backward_elemt(grad_out, x, mean, invstd, weight, sum_dy, sum_dy_xmu, counts)
        # the parameters' gradients are this rank's share; DDP averages them like every other gradient
        return (
            grad_input,
            grad_weight if needs_weight else None,
            grad_bias if needs_bias else None,
            None,
            None,
            None,
            None,
        )


class SyncBatchNorm(_BatchNorm):
    """Batch norm over the global batch of all ranks, on any device and backend.

    In training, one differentiable all-reduce of per-channel [Σ(x−K), Σ(x−K)², count] per call,
    shifted by the running mean K (identical on every rank) so the variance does not cancel
    catastrophically; the gradient path through the global statistics is exact. In eval mode, or in
    one process, it is plain batch norm on the running statistics.
    """

    synchronised = True  # what DDP's wrap() asks: its statistics agree on every rank already

    # "fused": torch's fused CUDA kernels on CUDA tensors (_FusedSyncBatchNorm); "composite": the
    # operations below, on any device. Not yet measured against each other on several GPUs.
    kernels = "composite"

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        if self._fused_applies(x):
            return self._fused(x)
        channels = x.shape[1]
        view = (1, channels) + (1,) * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        shift = self.running_mean.detach().float() if self.running_mean is not None else x.new_zeros(channels).float()
        centred = x.float() - shift.view(view)
        count = x.new_full((1,), x.numel() // channels, dtype=torch.float32)
        totals = sum_over_ranks(torch.cat([centred.sum(dims), (centred * centred).sum(dims), count]))
        n = totals[-1]
        shifted_mean = totals[:channels] / n
        var = (totals[channels : 2 * channels] / n - shifted_mean * shifted_mean).clamp_min(0)
        mean = shifted_mean + shift
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self._count_batch()
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).detach(), momentum)
        y = (x.float() - mean.view(view)) * torch.rsqrt(var.view(view) + self.eps)
        if self.affine:
            y = y * self.weight.view(view) + self.bias.view(view)
        return y.to(x.dtype)

    def _fused_applies(self, x: torch.Tensor) -> bool:
        return self.kernels == "fused" and x.is_cuda  # the fused kernels exist for CUDA only

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        # without running statistics (running_mean and running_var are None) the kernels ignore the momentum
        momentum = self._count_batch() if self.track_running_stats else 0.0
        return _FusedSyncBatchNorm.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.eps, momentum
        )

    @torch.no_grad()
    def _count_batch(self) -> float:
        """Count this batch and return the running statistics' momentum: momentum=None is a cumulative
        average, whose count read back is a host sync (as in torch's batch norm)."""
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum


class SyncBatchNormAct(SyncBatchNorm):
    """timm's BatchNormAct2d (batch norm, then dropout and activation in the same module) over the global
    batch; its state_dict keys are the original's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def convert_sync_batchnorm(module: nn.Module, device: torch.device, implementation: str = "byol") -> nn.Module:
    """Every batch norm in `module` synchronized across ranks: ours (any device, no host sync), ours with
    torch's fused CUDA kernels (`implementation="fused"`, CUDA tensors; no host sync either), or torch's
    SyncBatchNorm (`implementation="torch"`, CUDA only, one host sync per call). timm's batch norm +
    activation layers keep their activation (ours, either way); other subclasses of batch norm, whose
    forward we cannot know, stay per process and are counted in a warning."""
    if implementation not in ("byol", "fused", "torch"):
        raise ValueError(f"unknown SyncBatchNorm implementation '{implementation}'")
    if implementation == "torch" and device.type != "cuda":
        raise ValueError("torch's SyncBatchNorm runs on CUDA only")
    unknown: dict[str, int] = {}
    converted = _convert(module, implementation, unknown)
    if unknown:
        log.warning(
            "batch norm not synchronized (per-process statistics): "
            + ", ".join(f"{count} × {name}" for name, count in sorted(unknown.items()))
        )
    return converted


def _convert(module: nn.Module, implementation: str, unknown: dict[str, int]) -> nn.Module:
    if isinstance(module, (SyncBatchNorm, nn.SyncBatchNorm)):
        return module
    if isinstance(module, _BatchNorm):
        if type(module) in PLAIN_BATCH_NORMS and implementation == "torch":
            return nn.SyncBatchNorm.convert_sync_batchnorm(module)
        kernels = "fused" if implementation == "fused" else "composite"
        if type(module) in PLAIN_BATCH_NORMS:
            return _synced(SyncBatchNorm, module, kernels)
        if isinstance(getattr(module, "act", None), nn.Module) and isinstance(getattr(module, "drop", None), nn.Module):
            synced = _synced(SyncBatchNormAct, module, kernels)
            synced.drop, synced.act = module.drop, module.act
            return synced
        unknown[type(module).__name__] = unknown.get(type(module).__name__, 0) + 1
        return module
    for name, child in module.named_children():
        module.add_module(name, _convert(child, implementation, unknown))
    return module


def _synced(kind: type[SyncBatchNorm], module: _BatchNorm, kernels: str = "composite") -> SyncBatchNorm:
    synced = kind(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    synced.kernels = kernels
    if module.affine:
        synced.weight, synced.bias = module.weight, module.bias
    synced.running_mean, synced.running_var = module.running_mean, module.running_var
    synced.num_batches_tracked = module.num_batches_tracked
    synced.training = module.training
    return synced
