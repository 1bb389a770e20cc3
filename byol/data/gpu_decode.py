"""`--decode gpu`: folder images decoded on the GPU, a batch at a time.

PIL decodes about 157 JPEGs per second per core, torchvision's nvjpeg path about 3,700 per second on one
H100 (docs/data.md): with a fast step, an ImageNet-sized folder waits on the CPU. Here the DataLoader's
workers only read each JPEG's bytes and its EXIF orientation (from the header); the training process decodes
the batch's JPEGs in one call on the GPU, turns them upright, and resizes and crops them there
(folders.decode_jpegs_on). A file that is not a JPEG is decoded by PIL in the worker, as without this
option, and so is a JPEG the GPU cannot decode (CMYK, damaged): it comes back to the main process's PIL path
one by one, with the same skip-and-count rule for unreadable files.

Workers hand over Python bytes and ints, not tensors: a tensor per file would cost a shared-memory file
descriptor per file, hundreds per batch. nvjpeg runs on a stream of its own: torchvision writes the decoded
images on its internal stream without waiting for the stream that allocated them, so on the training stream a
block freed by the previous step could still be in use while it is overwritten.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

from byol.data.folders import decode_jpegs_on, decode_or_reason, exif_orientation, is_jpeg


class EncodedItems(torch.utils.data.Dataset):
    """Per file: (index, label, JPEG bytes or None, its EXIF orientation, PIL-decoded pixels or None, why
    unreadable). Workers only read JPEGs."""

    def __init__(self, files: list, labels: torch.Tensor | None, size: int):
        self.files, self.labels, self.size = files, labels, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index: int):
        label = int(self.labels[index]) if self.labels is not None else -1
        try:
            encoded = self.files[index].read_bytes()
        except OSError as error:
            return index, label, None, 1, None, error.strerror or type(error).__name__
        if is_jpeg(encoded):
            return index, label, encoded, exif_orientation(encoded), None, ""
        image, reason = decode_or_reason(self.files[index], self.size)
        return index, label, None, 1, image, reason


def as_list(items: list) -> list:
    """The DataLoader's collate: the items as they are (JPEGs differ in length)."""
    return items


Fallback = Callable[[int], tuple[torch.Tensor, torch.Tensor, int, str]]


def decode_batch(items: list, size: int, device: torch.device, fallback: Fallback):
    """(uint8 images (B, 3, size, size) on `device`, int64 labels on the CPU, [(index, why)] of the unreadable
    files). `fallback(index)`: the CPU path's item for a file the GPU could not decode (its skip rule included)."""
    jpegs = [position for position, item in enumerate(items) if item[2] is not None]
    with _decoding_stream(device):
        decoded = decode_jpegs_on([items[p][2] for p in jpegs], [items[p][3] for p in jpegs], size, device)
        decoded = dict(zip(jpegs, decoded, strict=True))
        images, labels, unreadable = [], [], []
        for position, (index, label, _, _, pixels, _) in enumerate(items):
            image = decoded.get(position)
            if image is None and pixels is None:  # the GPU or the worker could not: PIL here, then the next file
                pixels, label, failed, reason = fallback(index)
                if failed >= 0:
                    unreadable.append((failed, reason))
            if image is None:  # pinned, so the copy does not make the host wait
                image = pixels.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else pixels
            images.append(image)
            labels.append(int(label))
        batch = torch.stack(images)
    _hand_over(batch)
    return batch, torch.tensor(labels, dtype=torch.int64), unreadable


@functools.cache
def _side_stream(device: torch.device):
    return torch.cuda.Stream(device)


def _decoding_stream(device: torch.device):
    """A CUDA stream of the decoder's own, idle before each batch (it holds nothing but decoding)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    side = _side_stream(device)
    side.synchronize()
    return torch.cuda.stream(side)


def _hand_over(batch: torch.Tensor) -> None:
    """The training stream waits for the decoding stream, and the batch's memory stays its until then."""
    if batch.device.type == "cuda":
        main = torch.cuda.current_stream(batch.device)
        main.wait_stream(_side_stream(batch.device))
        batch.record_stream(main)
