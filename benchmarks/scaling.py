"""How a BYOL step's cost grows with batch size and image size: a markdown table of `byol bench` runs.

Each point is its own `byol bench --json` process, so the CPU peak-memory column (the process's peak
resident set) belongs to that point alone.

    python benchmarks/scaling.py [--device cpu] [--backbone resnet18] [--width 1.0]
        [--batch-sizes 16,32,64,128] [--image-sizes 32,64] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", default="1.0")
    parser.add_argument("--batch-sizes", default="16,32,64,128")
    parser.add_argument("--image-sizes", default="32,64")
    parser.add_argument("--steps", default="5")
    args = parser.parse_args()
    print("| image size | batch | ms/step | images/s | GFLOP/image | utilization | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    for size in args.image_sizes.split(","):
        for batch in args.batch_sizes.split(","):
            command = [
                sys.executable,
                "-m",
                "byol",
                "bench",
                "--json",
                "--device",
                args.device,
                "--backbone",
                args.backbone,
                "--width",
                args.width,
                "--image-size",
                size,
                "--batch-size",
                batch,
                "--steps",
                args.steps,
                "--warmup",
                "2",
            ]
            r = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            memory = r.get("peak_cuda_memory_mb", r.get("peak_rss_mb"))
            print(
                f"| {size} | {batch} | {r['ms_per_step']:.1f} | {r['images_per_s']:.1f} | "
                f"{r['flops_per_image'] / 1e9:.2f} | {100 * r['utilization']:.1f}% | {memory:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
