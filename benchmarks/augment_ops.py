"""Operations a training step dispatches: a CPU-side count of the kernels it would launch on a GPU.

On an H100 the step was bound by kernel launches (docs/performance.md, "GPU"), so the number of operations
matters there more than their arithmetic. This counts every ATen operation (and our registered ones) that
one call dispatches, with the model, the augmentation and a uint8 batch on the `meta` device, which takes
the accelerator's code path and computes nothing. View operations (reshapes, slices) launch no kernel and
are counted apart. Counts are of the second call: the first makes the augmentation's constant tables.

    python benchmarks/augment_ops.py            # BYOL, ResNet-18 × 0.25, 32 px, batch 64, RGB and grey
    python benchmarks/augment_ops.py --json     # the same as one JSON line
"""

import argparse
import json
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from byol.training.config import resolve
from byol.training.step import training_step
from byol.training.trainer import build_augment, build_learner, optimizer_for

# aten operations that return a view of their input: no kernel runs
VIEWS = {"view", "_unsafe_view", "slice", "select", "unsqueeze", "squeeze", "expand", "unbind", "permute", "t"}
VIEWS |= {
    "transpose",
    "alias",
    "as_strided",
    "detach",
    "split",
    "chunk",
    "split_with_sizes",
    "reshape",
    "_reshape_alias",
}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict:
        views = sum(n for name, n in self.ops.items() if name in VIEWS)
        return {"operations": sum(self.ops.values()), "views": views, "kernels": sum(self.ops.values()) - views}


def count(channels: int, image_size: int, batch_size: int, width: float) -> dict:
    """Operations of one augmentation call (both views) and of one whole step (augmentation, forward,
    backward, LARS, target EMA), BYOL with the README's defaults at this size."""
    cfg = resolve(overrides=dict(width=width, batch_size=batch_size, precision="fp32", device="cpu"))
    learner = build_learner(cfg, channels, image_size).to("meta")
    augment = build_augment(cfg, image_size, (0.5,) * channels, (0.25,) * channels).to("meta")
    optimizer = optimizer_for(cfg, learner)
    for group in optimizer.param_groups:
        group["lr"] = 0.1
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    images = torch.empty(batch_size, channels, image_size, image_size, dtype=torch.uint8, device="meta")
    result = {}
    for name, run in (
        ("augmentation", lambda: augment(images)),
        ("step", lambda: training_step(learner, augment, optimizer, scaler, images, 0.99)),
    ):
        run()  # the first call makes constant tables once per device
        with CountOps() as counter:
            run()
        result[name] = counter.summary()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32, help="pixels (default 32)")
    parser.add_argument("--batch-size", type=int, default=64, help="images (default 64)")
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier (default 0.25)")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    args = parser.parse_args()
    counts = {f"{channels}ch": count(channels, args.image_size, args.batch_size, args.width) for channels in (3, 1)}
    if args.json:
        print(json.dumps(counts))
        return
    for key, parts in counts.items():
        for name, summary in parts.items():
            print(
                f"{key} {name}: {summary['operations']} operations per call "
                f"({summary['kernels']} launch kernels, {summary['views']} are views)"
            )


if __name__ == "__main__":
    main()
