"""The `syncbn` section: byol's SyncBatchNorm (the default composite: one all-reduce, no mask; "fused": torch's
fused kernels, no mask) against torch's, in a 1-rank process group, bf16 input, channels_last: host syncs,
time and error per forward + backward of one batch-norm layer.

In a 1-rank group torch's nn.SyncBatchNorm falls back to plain batch norm ("torch": what a 1-GPU run gets);
"torch-sync-path" calls its synchronising function directly, mask and all, as on several GPUs. Multi-GPU
speed is not measured. On a CPU (a dry run) the group is gloo and only "byol" runs: the rest need CUDA.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.nn.functional as F

from .common import CL, Target, count_syncs, median_s, ms

VARIANTS = ("byol", "fused", "torch", "torch-sync-path")


@contextlib.contextmanager
def one_rank_group(t: Target):
    import torch.distributed as dist

    from byol.models import syncbn
    from byol.runtime import distributed as byol_dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    options = {"device_id": t.device if t.device.index is not None else torch.device("cuda", 0)} if t.cuda else {}
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("nccl" if t.cuda else "gloo", rank=0, world_size=1, timeout=timeout, **options)
    real_is_distributed = byol_dist.is_distributed
    # take the all-reduce path although the group has one rank (the layer and the collectives each ask)
    byol_dist.is_distributed = syncbn.is_distributed = lambda: True
    try:
        yield dist
    finally:
        byol_dist.is_distributed = syncbn.is_distributed = real_is_distributed
        dist.destroy_process_group()


def _forward_backward(t: Target, dist, name: str, x: torch.Tensor):
    from torch.nn.modules._functions import SyncBatchNorm as TorchSyncFunction

    from byol.models import syncbn

    implementation = "torch" if name == "torch-sync-path" else name
    bn = syncbn.convert_sync_batchnorm(torch.nn.BatchNorm2d(64), t.device, implementation=implementation)
    bn = bn.to(t.device)

    def fwd_bwd():
        with torch.autocast(t.device.type, dtype=torch.bfloat16):
            h = x.to(torch.bfloat16)  # a convolution's output under autocast
            if name == "torch-sync-path":
                args = (bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, bn.momentum, dist.group.WORLD, 1)
                y = TorchSyncFunction.apply(h, *args)
            else:
                y = bn(h)
        y.float().square().mean().backward()
        return y

    return fwd_bwd


def syncbn(t: Target) -> dict:
    out = {}
    with one_rank_group(t) as dist:
        x = torch.randn(128, 64, 16, 16, device=t.device).contiguous(memory_format=CL).requires_grad_()
        ref = F.batch_norm(x.detach(), None, None, training=True, eps=1e-5)
        for name in VARIANTS if t.cuda else VARIANTS[:1]:
            fwd_bwd = _forward_backward(t, dist, name, x)
            y = fwd_bwd()
            out[f"{name}_forward_dtype"] = str(y.dtype)
            out[f"{name}_max_abs_diff_vs_fp32_batchnorm"] = float((y.detach().float() - ref).abs().max())
            out[f"{name}_syncs_per_forward_backward"] = count_syncs(t, fwd_bwd)
            out[f"{name}_ms_per_forward_backward"] = ms(median_s(t, fwd_bwd, reps=20))
    out["note"] = (
        "1-rank group; multi-GPU speed is not measured. 'torch' is nn.SyncBatchNorm, which in one rank is "
        "plain batch norm; 'torch-sync-path' its synchronising function"
    )
    if not t.cuda:
        out["note"] += ". Dry run: gloo, 'byol' only (the others need CUDA)"
    return out
