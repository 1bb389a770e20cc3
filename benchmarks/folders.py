"""Folders at scale: how long a scan takes, how fast images decode per core (with and without the decoded
cache, with and without JPEG draft decoding), and the peak memory of `byol eval` as the folder grows.

    python benchmarks/folders.py scan --files 200000 [--root /tmp/byol-scan]
    python benchmarks/folders.py decode [--images 200] [--root /tmp/byol-decode]
    python benchmarks/folders.py eval-memory --sizes 2000,20000,100000 [--root /tmp/byol-eval] [--workers 2]

Each prints a markdown table; the figures in docs/data.md come from these commands. Generated data:
`scan` makes empty .jpg files in 1000 class folders (a scan reads names, not pixels); `decode` makes
500×375 JPEGs (ImageNet's typical size) and a few 3000×2000 ones; `eval-memory` makes 10 classes of
160×120 JPEGs (train) and a tenth as many test images, and runs `byol eval` at 96 px on each in its own
process, reporting the main process's peak resident memory, its largest decoding worker's, what the
features take and what the decoded pixels would.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin


def make_jpegs(folder: Path, count: int, width: int, height: int, classes: int = 1, seed: int = 0) -> list[Path]:
    """Smooth class-tinted images with noise (JPEG sizes like photos'), made once and reused."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width]
    paths = []
    for i in range(count):
        label = i % classes
        path = folder / (f"class{label:02d}" if classes > 1 else "") / f"img{i:07d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        base = np.sin(columns / (9 + i % 13)) * 50 + np.cos(rows / (7 + i % 11)) * 50 + 128
        tint = np.array([1.0 + 0.08 * label, 1.0, 1.0 - 0.05 * label])
        pixels = np.clip(base[..., None] * tint + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    return paths


def scan(args) -> None:
    from byol.data.datasets import load_folder
    from byol.data.folders import scan_images

    root = Path(args.root)
    if not root.exists():
        for i in range(args.files):
            folder = root / f"class{i % 1000:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:07d}.jpg").touch()
    for name, run in (
        ("scan_images", lambda: scan_images(root)),
        ("load_folder (scan + labels)", lambda: load_folder(str(root), "train", 224)),
    ):
        started = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - started
        count = len(result.files)
        print(f"| {name} | {count} files | {seconds:.2f} s | {count / seconds:,.0f} files/s |")


def decode(args) -> None:
    from byol.data.folders import DecodedCache, decode_image

    root = Path(args.root)
    photos = make_jpegs(root / "photos", args.images, 500, 375)
    large = make_jpegs(root / "large", 8, 3000, 2000, seed=1)
    rows, real_draft = [], JpegImagePlugin.JpegImageFile.draft
    for label, paths in (("500×375 JPEG → 256", photos), ("3000×2000 JPEG → 256", large)):
        for draft in (True, False):
            # without draft: the full-scale decode, for comparison
            JpegImagePlugin.JpegImageFile.draft = real_draft if draft else (lambda self, mode, size: None)
            started = time.perf_counter()
            for path in paths:
                decode_image(path, 256)
            rows.append(
                (label + (" (draft)" if draft else " (full decode)"), len(paths) / (time.perf_counter() - started))
            )
    JpegImagePlugin.JpegImageFile.draft = real_draft
    cache = DecodedCache(root / "cache", photos, 256)
    for index, path in enumerate(photos):
        cache.write(index, decode_image(path, 256))
    started = time.perf_counter()
    for index in range(len(photos)):
        cache.read(index)
    rows.append(("decoded cache read, 256 px (with CRC check)", len(photos) / (time.perf_counter() - started)))
    for label, rate in rows:
        print(f"| {label} | {rate:,.0f} images/s per core |")


# `byol eval` in a process that reports its own peak resident memory and its largest worker's, on stderr
MEASURED_EVAL = """
import json, resource, sys
from byol.cli import main
code = main(sys.argv[1:])
peak = {"main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
print("RSS " + json.dumps(peak), file=sys.stderr)
sys.exit(code)
"""


def eval_memory(args) -> None:
    import torch

    from byol.models.backbones import build_backbone
    from byol.runtime.checkpoint import EncoderInfo, save_weights

    root = Path(args.root)
    torch.manual_seed(0)
    side = 96  # above RAW_PIXEL_MAX_SIDE: the raw-pixel baseline is taken at 32 px, as for any large image
    encoder = build_backbone("resnet18", width=0.125, image_size=side)
    info = EncoderInfo("resnet18", 0.125, 3, side, encoder.feature_dim, "folder", (0.5,) * 3, (0.25,) * 3)
    save_weights(root / "encoder.safetensors", encoder.state_dict(), info.to_metadata())
    for size in (int(s) for s in args.sizes.split(",")):
        data = root / f"n{size}"
        make_jpegs(data / "train", size, 160, 120, classes=10)
        make_jpegs(data / "test", max(size // 10, 10), 160, 120, classes=10, seed=1)
        command = [
            sys.executable,
            "-c",
            MEASURED_EVAL,
            "eval",
            "--checkpoint",
            str(root / "encoder.safetensors"),
            "--dataset",
            "folder",
            "--data",
            str(data),
            "--device",
            "cpu",
            "--json",
            "--out",
            str(data / "eval"),
            "--workers",
            str(args.workers),
            *(["--no-baselines"] if args.no_baselines else []),
        ]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            print(f"| {size} | failed: {result.stderr.strip().splitlines()[-1]} |")
            continue
        report = json.loads(result.stdout)
        peak = json.loads(next(line[4:] for line in result.stderr.splitlines() if line.startswith("RSS ")))
        images = report["train_images"] + report["test_images"]
        per_image = 4 * (encoder.feature_dim + (0 if args.no_baselines else encoder.feature_dim + 3 * 32 * 32))
        print(
            f"| {size} + {size // 10} | {peak['main_mb']:,.0f} MB | {peak['largest_worker_mb']:,.0f} MB | "
            f"{images * per_image / 2**20:,.0f} MB | {images * 3 * side * side / 2**20:,.0f} MB | "
            f"{time.perf_counter() - started:.0f} s | {report['knn_top1']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("scan")
    one.add_argument("--files", type=int, default=200_000)
    one.add_argument("--root", default="/tmp/byol-scan")
    two = commands.add_parser("decode")
    two.add_argument("--images", type=int, default=200)
    two.add_argument("--root", default="/tmp/byol-decode")
    three = commands.add_parser("eval-memory")
    three.add_argument("--sizes", default="2000,20000,100000")
    three.add_argument("--root", default="/tmp/byol-eval")
    three.add_argument("--workers", type=int, default=2)
    three.add_argument("--no-baselines", action="store_true")
    args = parser.parse_args()
    {"scan": scan, "decode": decode, "eval-memory": eval_memory}[args.command](args)


if __name__ == "__main__":
    main()
