"""GPU memory of a training step, estimated on the CPU: what the step keeps for its backward pass per
image, plus what every step holds whatever the batch (weights, gradients, optimizer state, target network).

    python benchmarks/memory.py                       # the recipes of docs/imagenet.md, bf16, 224 px
    python benchmarks/memory.py --recipe byol-resnet50 --batch 2 --precision fp32

How: one forward pass of the real learner (`trainer.build_learner`, the configured method and backbone)
on `--batch` random images per view, under autocast like the GPU run, with `saved_tensors_hooks`
adding up the bytes of every distinct storage autograd keeps for backward. That is the memory that grows
with the batch. The fixed part is counted from the parameters: weights, their gradients, the
optimizer's state (LARS/SGD: one momentum buffer; AdamW: two moments), and a target network's copy.

What it leaves out (it was meant as a lower bound, yet came out 9% above the peak an H100 measured for
BYOL ResNet-50 at batch 128, docs/imagenet.md): the CUDA context and the caching allocator's
slack (typically 0.5–2 GB together), cuDNN/cuBLAS workspaces, the peak of transient buffers inside one
kernel, and the uint8 batch and augmentation temporaries (about 1 MB per image at 224 px). Attention
on the CPU may keep more than flash attention does on a GPU, which errs on the safe side for ViTs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byol.training.config import resolve  # after the path set-up above: runs from a checkout
from byol.training.trainer import build_learner

RECIPES = {  # the options of each docs/imagenet.md command that change memory
    "byol-resnet50": {"method": "byol", "backbone": "resnet50", "optimizer": "lars"},
    "byol-vit-s16": {"method": "byol", "backbone": "timm:vit_small_patch16_224", "optimizer": "adamw"},
    "dino-vit-s16": {
        "method": "dino",
        "backbone": "timm:vit_small_patch16_224",
        "optimizer": "adamw",
        "local_crops": 8,
        "local_size": 96,
        "prototypes": 65536,
    },
}
OPTIMIZER_STATES = {"lars": 1, "sgd": 1, "adamw": 2}  # fp32 tensors kept per trainable parameter


def saved_bytes_per_image(learner: torch.nn.Module, views: list[torch.Tensor], dtype: torch.dtype | None) -> float:
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        loss = learner(*views)
    del loss
    return sum(seen.values()) / len(views[0])


def estimate(recipe: str, batch: int, image_size: int, precision: str) -> dict:
    cfg = resolve(overrides={**RECIPES[recipe], "precision": precision})
    torch.manual_seed(0)
    learner = build_learner(cfg, channels=3, image_size=image_size).train()
    learner.set_progress(0, 2.0)  # past any frozen first epoch: every head trains
    local_size = cfg.local_size or 96
    views = [torch.randn(batch, 3, image_size, image_size) for _ in range(2)]
    views += [torch.randn(batch, 3, local_size, local_size) for _ in range(cfg.local_crops)]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    per_image = saved_bytes_per_image(learner, views, dtype)
    trainable = sum(p.numel() for p in learner.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in learner.parameters() if not p.requires_grad)  # the target network
    buffers = sum(b.numel() * b.element_size() for b in learner.buffers())
    fixed = 4 * trainable * (2 + OPTIMIZER_STATES[cfg.optimizer]) + 4 * frozen + buffers
    return {
        "recipe": recipe,
        "precision": precision,
        "image_size": image_size,
        "local_crops": cfg.local_crops,
        "trainable_params_M": round(trainable / 1e6, 1),
        "target_params_M": round(frozen / 1e6, 1),
        "fixed_GB": round(fixed / 1e9, 2),
        "per_image_MB": round(per_image / 1e6, 1),
        "measured_with_batch": batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=tuple(RECIPES), action="append")
    parser.add_argument("--batch", type=int, default=4, help="images per view in the measured forward pass")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--per-gpu", default="64,128,256,512", help="per-GPU batches to show totals for")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [estimate(r, args.batch, args.image_size, args.precision) for r in args.recipe or RECIPES]
    if args.json:
        print(json.dumps(results))
        return
    batches = [int(b) for b in args.per_gpu.split(",")]
    print(f"torch {torch.__version__}, {platform.machine()}, estimated on the CPU (benchmarks/memory.py)\n")
    print(
        "| recipe | precision | trainable / target params | fixed | per image | "
        + " | ".join(f"total at {b}/GPU" for b in batches)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(batches))
    for r in results:
        totals = " | ".join(f"{r['fixed_GB'] + r['per_image_MB'] * b / 1e3:.1f} GB" for b in batches)
        print(
            f"| {r['recipe']} | {r['precision']} | {r['trainable_params_M']} M / {r['target_params_M']} M | "
            f"{r['fixed_GB']} GB | {r['per_image_MB']} MB | {totals} |"
        )


if __name__ == "__main__":
    main()
