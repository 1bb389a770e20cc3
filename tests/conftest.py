import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from byol import build_backbone
from byol.data.datasets import BatchStream, ImageDataset
from byol.runtime.device import Runtime
from byol.runtime.distributed import Context
from byol.training.config import resolve
from byol.training.trainer import Schedule, Trainer

# The smallest network a run trains: ResNet-18 at 1/8 width and 16-32-wide heads.
TINY_NETWORK = dict(width=0.125, projection_dim=16, projector_hidden_dim=32, predictor_hidden_dim=32)
# A whole run (`train`) on a 128-image subset in seconds: the run-folder, resume and report tests.
TINY_RUN = dict(
    subset=128,
    **TINY_NETWORK,
    batch_size=32,
    epochs=2,
    log_every=1,
    checkpoint_every=3,
    warmup_epochs=0.5,
    lr=0.4,
    base_tau=0.97,
    device="cpu",
    precision="fp32",
)
# Steps of a quarter-width ResNet-18 on 28-px images, on any device: the graphs and CUDA tests.
SMALL_STEP = dict(
    width=0.25,
    projection_dim=32,
    projector_hidden_dim=64,
    predictor_hidden_dim=64,
    batch_size=32,
    epochs=3,
    warmup_epochs=0.5,
    lr=0.3,
    base_tau=0.97,
    knn_every=0,
)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_like(directory: Path, train: int = 256, test: int = 128, seed: int = 0) -> Path:
    """A tiny dataset in Fashion-MNIST's file format: 10 classes of noisy class-specific patterns."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(10, 28, 28))
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, size=count)
        images = np.clip(prototypes[labels] + rng.normal(0, 30, size=(count, 28, 28)), 0, 255)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def command_line(options: dict) -> list[str]:
    """`byol train`'s arguments for TrainConfig options: `--name value`, `--name`/`--no-name` for booleans."""
    words = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            words += [flag, str(value)]
    return words


def tiny_resnet(**options) -> nn.Module:
    """ResNet-18 at 1/8 width for 16-px images: the smallest real backbone, for what wraps one."""
    return build_backbone("resnet18", **{"width": 0.125, "image_size": 16, **options})


def toy_dataset(channels: int = 1, n: int = 128) -> ImageDataset:
    """`n` random 28-px images in 4 classes, the same on every call."""
    generator = torch.Generator().manual_seed(1)
    return ImageDataset(
        "toy",
        channels,
        28,
        (0.5,) * channels,
        (0.25,) * channels,
        images=torch.randint(0, 256, (n, channels, 28, 28), dtype=torch.uint8, generator=generator),
        labels=torch.randint(0, 4, (n,), generator=generator),
        classes=list("abcd"),
    )


def make_trainer(device: torch.device, precision: str, channels: int = 1, **overrides) -> tuple[Trainer, BatchStream]:
    """A trainer of SMALL_STEP on `toy_dataset` for any device and precision, with the stream that feeds it."""
    cfg = resolve(overrides={**SMALL_STEP, "device": device.type, "precision": precision, **overrides})
    dataset = toy_dataset(channels)
    runtime = Runtime.resolve(device, precision, None)
    runtime.prepare()
    stream = BatchStream(dataset, cfg.batch_size, device=device)
    torch.manual_seed(0)
    return Trainer(cfg, dataset, 28, runtime, Context(), Schedule.for_run(cfg, len(stream))), stream


@pytest.fixture
def fashion_dir(tmp_path) -> Path:
    return make_fashion_like(tmp_path / "fashion")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU: skipped, with the reason, where torch sees none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m cuda` on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
