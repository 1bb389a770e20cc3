"""The `data` and `decode` sections: how fast images reach the step.

data: Fashion-MNIST through BatchStream (pinned memory on CUDA), without and with the host-to-device copy, and
indexing a copy of the whole split kept on the device. decode: the folder path (byol.data.folders.decode_image on
synthetic JPEGs, one core), PIL's draft() on large JPEGs, torchvision's decode_jpeg on the GPU, and the training
stream over those JPEGs with PIL workers and with `--decode gpu`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import Target, sync


def _dataset(fmnist: str):
    from byol.data.datasets import ImageDataset, load_fashion_mnist

    try:
        return load_fashion_mnist(fmnist or None, "train", download=False), "fashion-mnist train"
    except Exception as error:  # synthetic images instead
        images = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8)
        dataset = ImageDataset(
            "synthetic", 1, 28, (0.5,), (0.25,), images=images, labels=torch.randint(0, 10, (60000,))
        )
        return dataset, f"synthetic (fashion-mnist not found: {error})"


def _rate(t: Target, batches, copy: bool) -> tuple[float, float]:
    """(images per second, seconds) over `batches`, optionally copying each to the device."""
    start, n = time.perf_counter(), 0
    for images, labels in batches:
        if copy:
            images = images.to(t.device, non_blocking=True)
            labels = labels.to(t.device, non_blocking=True)
        n += len(images)
    sync(t)
    seconds = time.perf_counter() - start
    return n / seconds, seconds


def _on_device_rate(t: Target, dataset, batch: int) -> float:
    gpu_images, gpu_labels = dataset.images.to(t.device), dataset.labels.to(t.device)
    start, n = time.perf_counter(), 0
    order = torch.randperm(len(gpu_images), device=t.device)
    for i in range(len(gpu_images) // batch):
        idx = order[i * batch : (i + 1) * batch]
        gpu_images[idx], gpu_labels[idx]
        n += batch
    sync(t)
    return n / (time.perf_counter() - start)


def data(t: Target, fmnist: str) -> dict:
    from byol.data.datasets import BatchStream

    dataset, name = _dataset(fmnist)
    batch = 64 if t.small else 512
    stream = BatchStream(dataset, batch, pin_memory=t.cuda)
    for images, _ in stream.epoch(0, 0):  # untimed: first touch of the array, the pinned allocator's cache
        images.to(t.device, non_blocking=True)
    sync(t)
    out = {"dataset": name, "stream_only_images_per_s": round(_rate(t, stream.epoch(0, 2), copy=False)[0])}
    rate, seconds = _rate(t, stream.epoch(0, 1), copy=True)
    out["stream_plus_copy_images_per_s"] = round(rate)
    out["per_step_host_ms_at_batch"] = round(1000 * seconds / max(len(stream), 1), 3)
    out["dataset_bytes_on_device_mb"] = round(dataset.images.numel() / 2**20, 1)
    out["on_device_indexing_images_per_s"] = round(_on_device_rate(t, dataset, batch))
    return out


def synthetic_jpegs(folder: str, count: int, width: int, height: int, seed: int = 0) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        base = (np.sin(xx / (7 + i % 13)) + np.cos(yy / (5 + i % 11))) * 60 + 128
        rgb = np.stack([base, np.roll(base, i, 1), np.roll(base, 2 * i, 0)], axis=2)
        rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"img{width}-{i:04d}.jpg")
        Image.fromarray(rgb).save(path, quality=90)
        paths.append(path)
    return paths


def _per_s(fn, paths: list[str]) -> float:
    start = time.perf_counter()
    for p in paths:
        fn(p)
    return len(paths) / (time.perf_counter() - start)


def decode_draft(path: str, size: int = 256):
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        image = image.convert("RGB")
        w, h = image.size
        scale = size / min(w, h)
        return image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)


def _decode_jpeg_cuda(t: Target, paths: list[str]) -> dict:
    try:
        import torchvision
        from torchvision.io import decode_jpeg, read_file

        datas = [read_file(p) for p in paths]
        decode_jpeg(datas[:8], device=t.device)
        sync(t)
        start, reps = time.perf_counter(), 3
        for _ in range(reps):
            for image in decode_jpeg(datas, device=t.device):
                F.interpolate(image.unsqueeze(0).float(), size=(256, 256), mode="bilinear", antialias=True)
        sync(t)
        rate = round(reps * len(datas) / (time.perf_counter() - start))
        return {"torchvision_decode_jpeg_cuda_images_per_s": rate, "torchvision_version": torchvision.__version__}
    except Exception as error:
        return {"torchvision_decode_jpeg_cuda": f"failed: {type(error).__name__}: {error}"}


def _stream_rates(t: Target, folder: str) -> dict:
    """Images/s of the training stream over the folder's JPEGs at load size 256: PIL in worker processes (the
    default), and `--decode gpu` (nvjpeg in batches; on the dry run's CPU, torchvision's CPU decoder)."""
    try:
        from byol.data.datasets import BatchStream, load_folder

        dataset = load_folder(folder, "train", 256)
        workers, batch = (0, 8) if t.small else (max((os.cpu_count() or 2) - 1, 1), 32)
        out = {}
        for name, decode_on in (("pil_workers", None), ("decode_gpu", t.device)):
            stream = BatchStream(dataset, batch, workers=workers, decode_on=decode_on)
            for _ in stream.epoch(0, 0):  # warm: worker start-up, the decoder's handles
                pass
            sync(t)
            start = time.perf_counter()
            count = sum(len(images) for images, _ in stream.epoch(0, 1))
            sync(t)
            out[f"stream_{name}_images_per_s"] = round(count / (time.perf_counter() - start))
        return out
    except Exception as error:
        return {"stream_decode_gpu": f"failed: {type(error).__name__}: {error}"}


def decode(t: Target) -> dict:
    from byol.data.folders import decode_image

    folder = tempfile.mkdtemp(prefix="byol-jpeg-")
    try:
        paths = synthetic_jpegs(folder, 16 if t.small else 96, 500, 375)
        out = {"jpeg_500x375_kb_mean": round(sum(os.path.getsize(p) for p in paths) / len(paths) / 1024, 1)}
        for p in paths[:4]:
            decode_image(Path(p), 256)
        rate = _per_s(lambda p: decode_image(Path(p), 256), paths)
        out["pil_decode_resize256_images_per_s_one_core"] = round(rate, 1)
        out["pil_estimate_all_cores_minus_one"] = round(rate * max((os.cpu_count() or 1) - 1, 1))
        big_w, big_h = (1500, 1000) if t.small else (3000, 2000)
        big = synthetic_jpegs(folder, 4, big_w, big_h, seed=1)
        out["big_jpeg"] = f"{big_w}x{big_h}"
        out["pil_3000x2000_images_per_s_one_core"] = round(_per_s(lambda p: decode_image(Path(p), 256), big), 2)
        out["pil_draft_3000x2000_images_per_s_one_core"] = round(_per_s(decode_draft, big), 2)
        if t.cuda:
            out.update(_decode_jpeg_cuda(t, paths))
        for path in big:  # the stream reads the 500x375 folder only
            os.remove(path)
        out.update(_stream_rates(t, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out
