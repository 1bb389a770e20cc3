"""The `parity` section: the deterministic augment ops and one fp32 BYOL loss on the CPU and on the device
(TF32 off), and the bf16 loss against the fp32 one. On a dry run the device is the CPU: the differences are 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from byol.data import augment as aug_mod
from byol.training.config import TrainConfig
from byol.training.trainer import build_learner

from .common import CL, Target


def _augment_ops(t: Target, generator: torch.Generator) -> dict:
    x = torch.rand(64, 3, 32, 32, generator=generator)
    factor = torch.rand(64, generator=generator) * 0.8 + 0.6
    delta = torch.rand(64, generator=generator) * 0.2 - 0.1
    sigma = torch.rand(64, generator=generator) * 1.9 + 0.1
    theta = torch.tensor([[0.6, 0.0, 0.1], [0.0, 0.7, -0.2]]).expand(64, 2, 3).contiguous()

    def diff(fn, *params):
        a = fn(x, *params)
        b = fn(x.to(t.device), *(p.to(t.device) for p in params)).cpu()
        return float((a - b).abs().max())

    def crop(images, th):
        grid = F.affine_grid(th, [64, 3, 24, 24], align_corners=False)
        return F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)

    return {
        "adjust_hue": diff(aug_mod.adjust_hue, delta),
        "adjust_saturation": diff(aug_mod.adjust_saturation, factor),
        "adjust_contrast": diff(aug_mod.adjust_contrast, factor),
        "adjust_brightness": diff(aug_mod.adjust_brightness, delta),
        "gaussian_blur": diff(aug_mod.gaussian_blur, sigma),
        "to_grayscale": diff(aug_mod.to_grayscale),
        "solarize": diff(aug_mod.solarize),
        "grid_sample_bicubic": diff(crop, theta),
    }


def _losses(t: Target, generator: torch.Generator) -> dict:
    torch.manual_seed(0)
    learner = build_learner(TrainConfig(backbone="resnet18", width=0.125 if t.small else 0.5), 3, 32)
    v1, v2 = torch.randn(2, 32, 3, 32, 32, generator=generator)
    cpu_loss = float(learner(v1, v2))
    on_device = learner.to(t.device).to(memory_format=CL)
    d1, d2 = (v.to(t.device).contiguous(memory_format=CL) for v in (v1, v2))
    device_loss = float(on_device(d1, d2))
    out = {"loss_fp32_cpu": cpu_loss, "loss_fp32_cuda": device_loss}
    out["loss_fp32_rel_diff"] = abs(cpu_loss - device_loss) / abs(cpu_loss)
    with torch.autocast(t.device.type, dtype=torch.bfloat16):
        bf16_loss = float(on_device(d1, d2))
    out["loss_bf16_cuda"] = bf16_loss
    out["loss_bf16_vs_fp32_rel_diff"] = abs(bf16_loss - device_loss) / abs(device_loss)
    return out


def parity(t: Target) -> dict:
    generator = torch.Generator().manual_seed(3)
    out = _augment_ops(t, generator)
    out["max_abs_diff_augment_ops"] = max(out.values())
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out.update(_losses(t, generator))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    if not t.cuda:
        out["note"] = "dry run: the CPU against itself"
    return out
