"""Features of images: an encoder's (or raw pixels'), a batch at a time, kept as (N, D) float32.

`split_features` is how `byol eval`, `byol embed` and the kNN monitor see a dataset: it decodes a split
in batches (folder images through worker processes), runs every extractor on each batch, and keeps
only the features, so the memory an evaluation needs grows with N × D, not with the pixels. Features
past `SPILL_BYTES` go to a memory-mapped temporary file instead of RAM.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from byol.data.datasets import ImageDataset, Unreadable, iterate_split, report_unreadable

SPILL_BYTES = 2 * 2**30  # one feature matrix larger than this is memory-mapped from a temporary file
RAW_PIXEL_MAX_SIDE = 64  # raw-pixel baselines of larger images are taken at RAW_PIXEL_SIDE (docs/data.md)
RAW_PIXEL_SIDE = 32


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor,
    transform: nn.Module,
    device: torch.device,
    batch_size: int = 512,
    keep_on_device: bool = False,
) -> torch.Tensor:
    """Pooled representations (N, D) in float32 of uint8 images (N, C, H, W), encoder in eval mode.

    On CUDA each chunk goes up from pinned memory without blocking, and the features stay on the
    device until the end (one copy back, unless `keep_on_device`), so the host never waits per chunk.
    """
    chunks = [
        encode(encoder, images[start : start + batch_size], transform, device)
        for start in range(0, len(images), batch_size)
    ]
    features = torch.cat(chunks) if chunks else torch.empty(0, device=device)
    return features if keep_on_device else features.cpu()


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor, transform: nn.Module, device: torch.device) -> torch.Tensor:
    """One batch of uint8 images → (B, D) float32 features on `device`, the encoder in eval mode."""
    was_training = encoder.training
    encoder.eval()
    weight = next(encoder.parameters())
    channels_last = weight.ndim == 4 and weight.is_contiguous(memory_format=torch.channels_last)
    if device.type == "cuda" and images.device.type == "cpu":
        images = images.pin_memory()
    x = transform(images.to(device, non_blocking=True))
    features = encoder(x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format))
    encoder.train(was_training)
    return features.float()


def pixel_features(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Raw pixels, normalised, as (N, C·H·W) float32; images larger than RAW_PIXEL_MAX_SIDE are first
    resized to RAW_PIXEL_SIDE (bilinear, antialiased), or the baseline would need C·H·W floats each."""
    x = images.float() / 255
    if x.shape[-1] > RAW_PIXEL_MAX_SIDE or x.shape[-2] > RAW_PIXEL_MAX_SIDE:
        x = F.interpolate(
            x, size=(RAW_PIXEL_SIDE, RAW_PIXEL_SIDE), mode="bilinear", antialias=True, align_corners=False
        )
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x.flatten(1)


class FeatureStore:
    """An (at most `rows`, D) float32 matrix filled a batch at a time: a tensor in RAM, or one backed by a
    memory-mapped temporary file when it would pass SPILL_BYTES (the file is unlinked at once and
    lives as long as the tensor does)."""

    def __init__(self, rows: int, dim: int):
        if rows * dim * 4 > SPILL_BYTES:
            handle, path = tempfile.mkstemp(prefix="byol-features-", suffix=".f32")
            os.close(handle)
            array = np.memmap(path, np.float32, "w+", shape=(rows, dim))
            os.unlink(path)
            self.data = torch.from_numpy(array)
        else:
            self.data = torch.empty(rows, dim)
        self.filled = 0

    def append(self, batch: torch.Tensor) -> None:
        self.data[self.filled : self.filled + len(batch)] = batch.cpu()
        self.filled += len(batch)

    def tensor(self) -> torch.Tensor:
        return self.data[: self.filled]


@dataclass
class SplitFeatures:
    """The features of every decodable image of a split, for each extractor, and what goes with them."""

    features: dict[str, torch.Tensor]  # extractor name → (N, D) float32 (RAM or memory-mapped)
    labels: torch.Tensor | None
    positions: torch.Tensor  # the split positions of the N images (unreadable files are not among them)
    unreadable: int


def split_features(
    dataset: ImageDataset,
    size: int,
    extractors: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    batch_size: int = 256,
    workers: int = 0,
) -> SplitFeatures:
    """The features of every decodable image of a split, one decoding pass for all extractors (each maps a
    uint8 batch to (B, D)). Unreadable files are left out with their labels, named in one warning; a split
    with none readable is an error."""
    unreadable = Unreadable()
    stores: dict[str, FeatureStore] = {}
    # Filled in place, like the features: small tensors kept from every batch would pin the C heap's top
    # above the batches' freed pixels, and the process would keep memory that grows with the pixels.
    labels = torch.empty(len(dataset), dtype=torch.int64) if dataset.labels is not None else None
    positions = torch.empty(len(dataset), dtype=torch.int64)
    filled = 0
    for images, batch_labels, batch_positions in iterate_split(dataset, size, batch_size, workers, unreadable):
        for name, extract in extractors.items():
            features = extract(images)
            if name not in stores:
                stores[name] = FeatureStore(len(dataset), features.shape[1])
            stores[name].append(features)
        if labels is not None:
            labels[filled : filled + len(images)] = batch_labels
        positions[filled : filled + len(images)] = batch_positions
        filled += len(images)
    report_unreadable(unreadable, dataset)
    return SplitFeatures(
        {name: store.tensor() for name, store in stores.items()},
        labels[:filled] if labels is not None else None,
        positions[:filled],
        unreadable.count,
    )
