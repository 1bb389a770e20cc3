"""Operations the augmentation dispatches per call: a CPU-side count of the kernels it would launch on a GPU.

On an H100 the training step was bound by kernel launches (docs/performance.md, "GPU"), so the number of
operations matters there more than their arithmetic. This counts every ATen operation one call of
`BYOLAugment` dispatches, along the accelerator's code path (torch.where masking, no indexing), without a GPU:

    python benchmarks/augment_ops.py                    # both views, 3 and 1 channels, 32 px, batch 64
    python benchmarks/augment_ops.py --views-alone      # each view on its own, as before views were batched
"""

import argparse

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from byol.data import augment


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--views-alone", action="store_true", help="view1 and view2 called one after the other")
    args = parser.parse_args()
    augment._apply_to = augment._apply_where  # the accelerator's path
    for channels in (3, 1):
        pipeline = augment.BYOLAugment(args.image_size, (0.5,) * channels, (0.25,) * channels)
        images = torch.randint(0, 256, (args.batch_size, channels, args.image_size, args.image_size), dtype=torch.uint8)
        with CountOps() as counter:
            if args.views_alone:
                pipeline.view1(images), pipeline.view2(images)
            else:
                pipeline(images)
        print(
            f"{channels} channel{'s' if channels > 1 else ''}: {counter.count} operations per call "
            f"({'each view alone' if args.views_alone else 'both views in one batch'})"
        )


if __name__ == "__main__":
    main()
