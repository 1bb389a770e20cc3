"""Datasets as uint8 image batches; augmentation happens later, on the training device.

Two kinds of source:
- in memory (Fashion-MNIST, CIFAR-10/100): the whole split is one uint8 tensor (N, C, H, W);
  a batch is an index into it, no worker processes needed.
- a folder of image files: decoded by DataLoader workers, resized (shorter side) and centre-cropped
  to a square of `load_size` pixels, so the random crop later happens on a fixed-size image
  (folders.py: scanning, decoding, the decoded cache). Every split of a folder numbers its classes
  by the training split's class names.

Batch order comes from a generator seeded with (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one, and skipping ahead within an epoch costs nothing.
"""

from __future__ import annotations

import gzip
import os
import signal
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from byol.data import gpu_decode
from byol.data.folders import IMAGE_EXTENSIONS, DecodedCache, decode_or_reason, scan_images
from byol.runtime.errors import UserError
from byol.runtime.logs import log

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

# Per-channel statistics of the training splits, in [0, 1] units.
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # Folders of photos: ImageNet's statistics are the usual default.
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "byol"


@dataclass
class ImageDataset:
    """A split: uint8 `images` (N, C, H, W) in memory, or `files` decoded on demand."""

    name: str
    channels: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    images: torch.Tensor | None = None
    files: list[Path] | None = None
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    load_size: int | None = None
    root: Path | None = None  # the folder a folder split was scanned from

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 0

    def subset(self, count: int, seed: int) -> ImageDataset:
        """A seeded random subset of `count` items (all when count ≥ len)."""
        if count is None or count >= len(self):
            return self
        generator = torch.Generator().manual_seed(seed)
        return self.select(torch.randperm(len(self), generator=generator)[:count].sort().values)

    def select(self, index: torch.Tensor) -> ImageDataset:
        """The items at `index`, in that order."""
        return ImageDataset(
            name=self.name,
            channels=self.channels,
            native_size=self.native_size,
            mean=self.mean,
            std=self.std,
            images=self.images[index] if self.images is not None else None,
            files=[self.files[i] for i in index.tolist()] if self.files is not None else None,
            labels=self.labels[index] if self.labels is not None else None,
            classes=self.classes,
            load_size=self.load_size,
            root=self.root,
        )


# ---------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\x00\x00":
                raise UserError(f"{path}: not an IDX file")
            ndim = magic[3]
            shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except (OSError, EOFError) as error:
        raise UserError(f"{path}: cannot read ({error})") from None
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path}: truncated ({data.size} bytes of data, expected {int(np.prod(shape))})")
    return data.reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist_dirs(data: str | None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order."""
    if data:
        return [Path(data)]
    return [FASHION_MNIST_SYSTEM_DIR, cache_dir() / "fashion-mnist"]


def _has_fashion_mnist(directory: Path) -> bool:
    return all(_find_idx(directory, stem) for pair in FASHION_MNIST_FILES.values() for stem in pair)


def _download_fashion_mnist(directory: Path, timeout: float = 10.0) -> bool:
    """Best effort: fetch the four files into `directory`; False when the network does not allow it."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        for pair in FASHION_MNIST_FILES.values():
            for stem in pair:
                target = directory / (stem + ".gz")
                if target.exists():
                    continue
                with urllib.request.urlopen(FASHION_MNIST_URL + stem + ".gz", timeout=timeout) as response:
                    payload = response.read()
                partial = target.with_suffix(".gz.part")
                partial.write_bytes(payload)
                partial.replace(target)
    except OSError:
        return False
    return _has_fashion_mnist(directory)


def load_fashion_mnist(data: str | None, split: str, download: bool = True) -> ImageDataset:
    candidates = fashion_mnist_dirs(data)
    found = next((d for d in candidates if _has_fashion_mnist(d)), None)
    if found is None and download and not data:
        cache = cache_dir() / "fashion-mnist"
        if _download_fashion_mnist(cache):
            found = cache
    if found is None:
        where = ", ".join(str(d) for d in candidates)
        raise UserError(
            f"Fashion-MNIST not found in {where}: install it with `sudo apt-get install dataset-fashion-mnist` "
            "or pass --data DIR holding train-images-idx3-ubyte.gz and the other three files"
        )
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    images = _read_idx(_find_idx(found, image_stem))
    labels = _read_idx(_find_idx(found, label_stem))
    return ImageDataset(
        name="fashion-mnist",
        channels=1,
        native_size=28,
        mean=STATS["fashion-mnist"][0],
        std=STATS["fashion-mnist"][1],
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=FASHION_MNIST_CLASSES,
    )


# ---------------------------------------------------------------- CIFAR


def load_cifar(name: str, data: str | None, split: str, download: bool = True) -> ImageDataset:
    from torchvision import datasets as torchvision_datasets  # over a second to import: only for CIFAR

    root = Path(data) if data else cache_dir() / name
    cls = torchvision_datasets.CIFAR10 if name == "cifar10" else torchvision_datasets.CIFAR100
    try:
        dataset = cls(str(root), train=(split == "train"), download=False)
    except RuntimeError:
        if not download:
            raise UserError(f"{name} not found in {root} (option --data)") from None
        try:
            dataset = cls(str(root), train=(split == "train"), download=True)
        except Exception:
            raise UserError(
                f"{name} not found in {root} and could not be downloaded: put the extracted "
                f"'{cls.base_folder}' folder there or pass --data DIR"
            ) from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return ImageDataset(
        name=name,
        channels=3,
        native_size=32,
        mean=STATS[name][0],
        std=STATS[name][1],
        images=images,
        labels=torch.tensor(dataset.targets, dtype=torch.int64),
        classes=list(dataset.classes),
    )


# ---------------------------------------------------------------- folders of images


def scan_folder(
    root: Path, classes: list[str] | None = None
) -> tuple[list[Path], torch.Tensor | None, list[str] | None]:
    """Image files under `root`, and their labels when every file sits in a first-level sub-folder.

    `classes`: the class names to number by (a test split takes its training split's), so the same
    name gets the same label in every split; a name not among them is an error. Without it the classes
    are this folder's own, sorted. Hidden and non-image files are left out, and counted in the log.
    """
    if not root.exists():
        raise UserError(f"{root}: no such folder (option --data)")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (option --data)")
    scan = scan_images(root)
    if scan.hidden or scan.other or scan.repeated_folders:
        log.info(
            f"{root}: {len(scan.files)} images; left out {scan.hidden} hidden entries (dot-names, ._ AppleDouble "
            f"files, __MACOSX), {scan.other} files that are not images"
            + (f", {len(scan.repeated_folders)} folders reached twice through links" if scan.repeated_folders else "")
        )
    files = scan.files
    if not files:
        raise UserError(f"{root}: no image files found ({', '.join(sorted(IMAGE_EXTENSIONS))}) (option --data)")
    top = [p.relative_to(root).parts for p in files]
    if not all(len(parts) > 1 for parts in top):
        return files, None, None
    names = sorted({parts[0] for parts in top})
    if classes is None:
        classes = names
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise UserError(
            f"{root / unknown[0]}: class '{unknown[0]}' is not among the {len(classes)} classes of the "
            f"training split ({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''})"
        )
    index = {c: i for i, c in enumerate(classes)}
    return files, torch.tensor([index[parts[0]] for parts in top], dtype=torch.int64), list(classes)


def load_folder(data: str | None, split: str, load_size: int, classes: list[str] | None = None) -> ImageDataset:
    """A split of a folder dataset: DATA/train and DATA/test (or val) when they exist, else DATA for training.
    `classes`: the training split's class names, which other splits are numbered by."""
    if not data:
        raise UserError("--dataset folder needs --data PATH (a folder of images)")
    root = Path(data)
    split_names = {"train": ("train",), "test": ("test", "val")}[split]
    for name in split_names:
        if (root / name).is_dir():
            root = root / name
            break
    else:
        if split == "test":
            raise UserError(f"{data}: no test/ or val/ sub-folder to evaluate on (option --data)")
    files, labels, classes = scan_folder(root, classes)
    mean, std = STATS["folder"]
    return ImageDataset(
        name="folder",
        channels=3,
        native_size=load_size,
        mean=mean,
        std=std,
        files=files,
        labels=labels,
        classes=classes,
        load_size=load_size,
        root=root,
    )


class _FolderItems(torch.utils.data.Dataset):
    """Decoded folder images for training. An unreadable file is skipped: its slot in the batch goes to
    the next readable file in the folder (deterministic, so batch shapes, ranks and resumes all stay
    aligned), and the item reports which file failed and why, for the caller's count and threshold.
    With a DecodedCache, an image decoded once is read from it afterwards."""

    TRIES = 64

    def __init__(self, dataset: ImageDataset, cache: DecodedCache | None = None):
        self.dataset, self.cache = dataset, cache

    def __len__(self):
        return len(self.dataset)

    def decode(self, index: int) -> tuple[torch.Tensor | None, str]:
        if self.cache is not None:
            state, image = self.cache.read(index)
            if state == DecodedCache.UNREADABLE:
                return None, "unreadable when it was first decoded (decoded cache)"
            if image is not None:
                return image, ""
        image, reason = decode_or_reason(self.dataset.files[index], self.dataset.load_size)
        if self.cache is not None:
            self.cache.write(index, image)
        return image, reason

    def __getitem__(self, index):
        failed, reason = -1, ""
        for offset in range(self.TRIES):
            candidate = (index + offset) % len(self.dataset)
            image, why = self.decode(candidate)
            if image is not None:
                labels = self.dataset.labels
                label = labels[candidate] if labels is not None else torch.tensor(-1)
                return image, label, failed, reason
            if offset == 0:
                failed, reason = index, why
        # A long run of unreadable files: a black image keeps the batch shape; the count (and its
        # limit) in the main process will have its say.
        size = self.dataset.load_size
        return torch.zeros(3, size, size, dtype=torch.uint8), torch.tensor(-1), failed, reason


class _EvalItems(torch.utils.data.Dataset):
    """Folder images for evaluation, in order: (image or a blank, label, readable, reason)."""

    def __init__(self, dataset: ImageDataset, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, reason = decode_or_reason(self.dataset.files[index], self.size)
        label = self.dataset.labels[index] if self.dataset.labels is not None else torch.tensor(-1)
        if image is None:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), label, False, reason
        return image, label, True, ""


@dataclass
class Unreadable:
    """Files of an evaluation split that could not be decoded (left out, with their labels)."""

    count: int = 0
    first: str = ""

    def add(self, path: Path, reason: str) -> None:
        if not self.count:
            self.first = f"{path}: {reason}"
        self.count += 1


def iterate_split(dataset: ImageDataset, size: int, batch_size: int = 256, workers: int = 0, unreadable=None):
    """Every decodable image of a split, in order, a batch at a time: (uint8 images, labels or None,
    their positions in the split).

    Folder images are decoded by `workers` processes and never held beyond their batch, so what an
    evaluation keeps grows with its features, not its pixels. An unreadable file is left out with its
    label (a black image with a real label would bias the score) and counted in `unreadable`.
    """
    unreadable = unreadable if unreadable is not None else Unreadable()
    if dataset.images is not None:
        for start in range(0, len(dataset), batch_size):
            labels = dataset.labels[start : start + batch_size] if dataset.labels is not None else None
            images = dataset.images[start : start + batch_size]
            yield images, labels, torch.arange(start, start + len(images))
        return
    loader = torch.utils.data.DataLoader(
        _EvalItems(dataset, size), batch_size=batch_size, num_workers=workers, worker_init_fn=_ignore_interrupts
    )
    start = 0
    for images, labels, readable, reasons in loader:
        for offset in (~readable).nonzero().flatten().tolist():
            unreadable.add(dataset.files[start + offset], reasons[offset])
        positions = torch.arange(start, start + len(images))[readable]
        start += len(images)
        if len(positions):
            yield images[readable], (labels[readable] if dataset.labels is not None else None), positions


def report_unreadable(unreadable: Unreadable, dataset: ImageDataset) -> None:
    """One warning naming the first unreadable file, or an error when no file of the split was readable."""
    if not unreadable.count:
        return
    where = dataset.root or (dataset.files[0].parent if dataset.files else dataset.name)
    if unreadable.count == len(dataset):
        raise UserError(f"{where}: none of the {len(dataset)} images can be decoded (first: {unreadable.first})")
    log.warning(
        f"{unreadable.count} of {len(dataset)} images under {where} could not be decoded and are left out "
        f"of this evaluation split (first: {unreadable.first})"
    )


def dataset_images(dataset: ImageDataset, size: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Every decodable image of a split in memory as uint8 (N, C, size, size), their labels, and how many
    files could not be decoded. For what must hold pixels (the semi-supervised fine-tune's labelled
    subset); evaluation streams with `iterate_split` instead."""
    if dataset.images is not None:
        return dataset.images, dataset.labels, 0
    unreadable = Unreadable()
    batches = list(iterate_split(dataset, size, unreadable=unreadable))
    report_unreadable(unreadable, dataset)
    images = torch.cat([b for b, _, _ in batches])
    labels = torch.cat([labels for _, labels, _ in batches]) if dataset.labels is not None else None
    return images, labels, unreadable.count


# ---------------------------------------------------------------- entry points


# name → loader(data, split, load_size, download, classes): the datasets `byol train --dataset` knows.
DATASETS = {
    "fashion-mnist": lambda data, split, load_size, download, classes: load_fashion_mnist(data, split, download),
    "cifar10": lambda data, split, load_size, download, classes: load_cifar("cifar10", data, split, download),
    "cifar100": lambda data, split, load_size, download, classes: load_cifar("cifar100", data, split, download),
    "folder": lambda data, split, load_size, download, classes: load_folder(data, split, load_size, classes),
}


def load_dataset(
    name: str,
    data: str | None,
    split: str,
    load_size: int = 224,
    download: bool = True,
    classes: list[str] | None = None,
) -> ImageDataset:
    """Split `split` ("train" or "test") of dataset `name` from `DATASETS`, found at `data` or its usual
    places. `classes`: the training split's class names, so a test split is numbered like it."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](data, split, load_size, download, classes)


def decoding_workers(requested: int | None) -> int:
    """Worker processes that decode folder images: as asked, else one per core this process may use."""
    if requested is not None:
        return requested
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def epoch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(size, generator=generator)


def _ignore_interrupts(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group; the training process handles it (checkpoint, then exit),
    so the decoding workers must not die under it first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BatchStream:
    """Full batches of one epoch, in a seeded order, from batch `start` on.

    Yields (uint8 images, labels or None). `batch_size` is the global batch: with `world_size` W,
    rank r gets rows r·B/W … (r+1)·B/W of each global batch, so every rank walks the same seeded
    order (a distributed sampler re-seeded each epoch) and the global batches are those of one
    process. Unreadable folder images are skipped (see _FolderItems) and counted in `bad_images`;
    more than `max_bad_fraction` of the dataset is an error.

    With `device` given, an in-memory split is moved there once (uint8, with its labels) and each batch is
    an index into it, in the same order: on CUDA, device memory instead of a host copy per step.
    With `decode_on` a device, folder JPEGs are decoded there (gpu_decode.py) and batches arrive on it.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        workers: int = 2,
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
        max_bad_fraction: float = 0.01,
        device: torch.device | None = None,
        cache: DecodedCache | None = None,
        decode_on: torch.device | None = None,
    ):
        if batch_size % world_size:
            raise UserError(f"--batch-size {batch_size} does not split evenly over {world_size} processes")
        self.images, self.labels = dataset.images, dataset.labels
        self.on_device = dataset.images is not None and device is not None
        if self.on_device:
            self.images = dataset.images.to(device)
            self.labels = dataset.labels.to(device) if dataset.labels is not None else None
        self.dataset = dataset
        self.cache = cache  # folder images: a DecodedCache of this dataset's files, filled as they are decoded
        self.decode_on = decode_on if dataset.files is not None else None
        self.batch_size = batch_size
        self.workers = workers
        self.pin_memory = pin_memory
        self.rank = rank
        self.world_size = world_size
        self.max_bad_fraction = max_bad_fraction
        self.bad_files: dict[int, str] = {}  # index → why it could not be decoded

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size

    def epoch(self, seed: int, epoch: int, start: int = 0, shuffle: bool = True, drop_last: bool = True):
        order = epoch_order(len(self.dataset), seed, epoch) if shuffle else torch.arange(len(self.dataset))
        if self.on_device:
            order = order.to(self.images.device)  # one copy per epoch; the batches below are views of it
        count = len(self) if drop_last else -(-len(self.dataset) // self.batch_size)
        local = self.batch_size // self.world_size
        first = self.rank * local
        batches = [
            order[i * self.batch_size : (i + 1) * self.batch_size][first : first + local] for i in range(start, count)
        ]
        if self.images is not None:
            for index in batches:
                images = self.images[index]
                labels = self.labels[index] if self.labels is not None else None
                yield (images.pin_memory() if self.pin_memory and not self.on_device else images), labels
            return
        if self.decode_on is not None:
            yield from self._decoded_on_device(batches)
            return
        loader = self._loader(_FolderItems(self.dataset, self.cache), batches)
        for images, labels, failed, reasons in loader:
            for index, reason in zip(failed.tolist(), reasons):
                if index >= 0:
                    self._count_bad(index, reason)
            yield images, (labels if self.dataset.labels is not None else None)

    def _loader(self, items: torch.utils.data.Dataset, batches: list, **options) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            items,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=self.workers,
            pin_memory=self.pin_memory and self.decode_on is None,  # decode_batch pins what it copies
            persistent_workers=False,
            worker_init_fn=_ignore_interrupts,
            **options,
        )

    def _decoded_on_device(self, batches: list):
        dataset = self.dataset
        items = gpu_decode.EncodedItems(dataset.files, dataset.labels, dataset.load_size)
        fallback = _FolderItems(dataset).__getitem__
        for batch in self._loader(items, batches, collate_fn=gpu_decode.as_list):
            images, labels, unreadable = gpu_decode.decode_batch(batch, dataset.load_size, self.decode_on, fallback)
            for index, reason in unreadable:
                self._count_bad(index, reason)
            yield images, (labels if dataset.labels is not None else None)

    def _count_bad(self, index: int, reason: str) -> None:
        if index in self.bad_files:
            return
        path = self.dataset.files[index]
        self.bad_files[index] = reason
        if len(self.bad_files) == 1:
            log.warning(f"{path}: cannot be decoded ({reason}); skipped, and further unreadable images are counted")
        # One bad file never stops a run on its own, unless the limit is 0 (strict).
        limit = max(1.0, self.max_bad_fraction * len(self.dataset)) if self.max_bad_fraction else 0.0
        if len(self.bad_files) > limit:
            raise UserError(
                f"{len(self.bad_files)} of {len(self.dataset)} images under {self.dataset.root or path.parent} "
                f"cannot be decoded (latest: {path}: {reason}), more than --max-bad-fraction "
                f"{self.max_bad_fraction:g} allows: remove or fix them, or raise the limit"
            )

    @property
    def bad_images(self) -> int:
        """Distinct unreadable files met so far (each skipped)."""
        return len(self.bad_files)
