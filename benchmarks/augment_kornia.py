"""Our batched augmentation (byol.BYOLAugment) against the same pipeline built from kornia.

Decides whether byol keeps its hand-written augmentation (docs/performance.md). Both sides draw every
parameter per image and run on the device; kornia is given the paper's settings for both views (docs/method.md).

    python benchmarks/augment_kornia.py [--device cpu] [--batch-size 256] [--image-size 32] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from byol import VIEW1, VIEW2, BYOLAugment


def kornia_pipeline(size: int, view, mean, std):
    import kornia.augmentation as K

    radius = size // 20
    layers = [
        K.RandomResizedCrop((size, size), scale=view.crop_scale, ratio=view.crop_ratio, resample="bicubic"),
        K.RandomHorizontalFlip(p=view.flip_prob),
        K.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue, p=view.jitter_prob),
        K.RandomGrayscale(p=view.grayscale_prob),
    ]
    if view.blur_prob > 0 and radius > 0:
        layers.append(K.RandomGaussianBlur((2 * radius + 1,) * 2, view.blur_sigma, p=view.blur_prob))
    if view.solarize_prob > 0:
        layers.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=view.solarize_prob))
    layers.append(K.Normalize(torch.tensor(mean), torch.tensor(std)))
    return torch.nn.Sequential(*layers)


def timed(fn, device, repeats):
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    images = torch.randint(
        0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8, device=device
    )
    ours = BYOLAugment(args.image_size, mean, std).to(device)
    view1 = kornia_pipeline(args.image_size, VIEW1, mean, std).to(device)
    view2 = kornia_pipeline(args.image_size, VIEW2, mean, std).to(device)

    def theirs():
        x = images.float() / 255
        return view1(x), view2(x)

    with torch.no_grad():
        ours_s = timed(lambda: ours(images), device, args.repeats)
        kornia_s = timed(theirs, device, args.repeats)
    print(
        json.dumps(
            {
                "device": str(device),
                "threads": torch.get_num_threads(),
                "batch_size": args.batch_size,
                "image_size": args.image_size,
                "ours_ms": 1000 * ours_s,
                "kornia_ms": 1000 * kornia_s,
                "kornia_over_ours": kornia_s / ours_s,
            }
        )
    )


if __name__ == "__main__":
    main()
