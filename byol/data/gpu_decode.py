"""`--decode gpu`: folder images decoded on the GPU, a batch at a time.

PIL decodes about 157 JPEGs per second per core, torchvision's nvjpeg path about 3,700 per second on one
H100 (docs/data.md): with a fast step, an ImageNet-sized folder waits on the CPU. Here the DataLoader's
workers only read each JPEG's bytes; the training process decodes the batch's JPEGs in one call on the GPU
and resizes and crops them there (folders.decode_jpegs_on). A file that is not a JPEG is decoded by PIL in
the worker, as without this option, and so is a JPEG the GPU cannot decode (CMYK, damaged): it comes back
to the main process's PIL path one by one, with the same skip-and-count rule for unreadable files.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from byol.data.folders import decode_jpegs_on, decode_or_reason, is_jpeg, read_encoded


class EncodedItems(torch.utils.data.Dataset):
    """(index, label, JPEG bytes or None, PIL-decoded pixels or None, why unreadable) per file: workers read."""

    def __init__(self, files: list, labels: torch.Tensor | None, size: int):
        self.files, self.labels, self.size = files, labels, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index: int):
        label = self.labels[index] if self.labels is not None else torch.tensor(-1)
        try:
            encoded = read_encoded(self.files[index])
        except OSError as error:
            return index, label, None, None, error.strerror or type(error).__name__
        if is_jpeg(encoded):
            return index, label, encoded, None, ""
        image, reason = decode_or_reason(self.files[index], self.size)
        return index, label, None, image, reason


def as_list(items: list) -> list:
    """The DataLoader's collate: the items as they are (JPEGs differ in length)."""
    return items


Fallback = Callable[[int], tuple[torch.Tensor, torch.Tensor, int, str]]


def decode_batch(items: list, size: int, device: torch.device, fallback: Fallback):
    """(uint8 images (B, 3, size, size) and labels on `device`, [(index, why)] of the unreadable files).
    `fallback(index)`: the CPU path's item for a file the GPU could not decode (its skip rule included)."""
    jpegs = [i for i, item in enumerate(items) if item[2] is not None]
    decoded = dict(zip(jpegs, decode_jpegs_on([items[i][2] for i in jpegs], size, device), strict=True))
    images, labels, unreadable = [], [], []
    for position, (index, label, _, pixels, reason) in enumerate(items):
        image = decoded.get(position)
        if image is None and pixels is not None:
            image = pixels.to(device, non_blocking=True)
        if image is None:  # the GPU or the worker could not decode it: PIL in this process, then the next file
            pixels, label, failed, reason = fallback(index)
            image = pixels.to(device)
            if failed >= 0:
                unreadable.append((failed, reason))
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.stack(labels).to(device), unreadable
