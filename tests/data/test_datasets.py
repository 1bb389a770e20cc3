"""Folder images nobody checked: what converts is converted, what cannot be read is skipped and counted."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from byol.data import datasets as data
from byol.data import folders
from byol.data.datasets import BatchStream, load_folder
from byol.data.folders import decode_image
from byol.runtime.errors import UserError


def _rgb(size=(12, 10), colour=(200, 40, 90)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_convertible_images_are_converted(tmp_path):
    _rgb().convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((9, 9), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    Image.new("RGBA", (8, 8), (10, 200, 30, 0)).save(tmp_path / "rgba.png")
    _rgb((1, 1)).save(tmp_path / "one.png")
    _rgb().convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.gif", transparency=0)
    Image.new("L", (8, 8), 77).save(tmp_path / "grey.bmp")

    decoded = {path.name: decode_image(path, 16) for path in sorted(tmp_path.iterdir())}
    for name, image in decoded.items():
        assert image.shape == (3, 16, 16) and image.dtype == torch.uint8, name
    assert abs(decoded["grey16.png"].float().mean().item() - 127.5) < 1.5  # scaled, not clipped to white
    assert decoded["cmyk.jpg"][0].float().mean() > 150 and decoded["cmyk.jpg"][1].float().mean() < 90
    assert decoded["rgba.png"][1].float().mean() > 150  # colour kept, alpha dropped
    assert decoded["one.png"].float().std(dim=(1, 2)).max() == 0 and decoded["one.png"][0, 0, 0] == 200
    assert decoded["grey.bmp"].float().mean().round() == 77


def _folder_with_bad_files(root, good=20):
    root.mkdir()
    for i in range(good):
        _rgb(colour=(50 + i, 100, 150)).save(root / f"good{i:02d}.png")
    (root / "empty.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    _rgb((64, 64)).save(buffer, format="JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[:200])
    (root / "notes.png").write_text("not an image")
    (root / "locked.png").write_bytes(b"")  # unreadable: made to raise PermissionError below
    return root


def _unreadable(monkeypatch, name):
    real = folders.decode_image

    def decode(path, size):
        if path.name == name:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, size)

    monkeypatch.setattr(folders, "decode_image", decode)


def test_unreadable_images_are_skipped_counted_and_their_slots_refilled(tmp_path, monkeypatch, capsys):
    _unreadable(monkeypatch, "locked.png")
    dataset = load_folder(str(_folder_with_bad_files(tmp_path / "images")), "train", load_size=8)
    stream = BatchStream(dataset, batch_size=8, workers=0, max_bad_fraction=0.2)
    batches = [images for images, _ in stream.epoch(seed=0, epoch=0, drop_last=False)]

    assert stream.bad_images == 4 and set(stream.bad_files) == {
        i
        for i, path in enumerate(dataset.files)
        if path.name in ("empty.jpg", "truncated.jpg", "notes.png", "locked.png")
    }
    assert sum(len(b) for b in batches) == 24  # every slot filled
    assert all(int(image.amax()) > 0 for batch in batches for image in batch)  # by real images, not black ones
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "cannot be decoded" in warning and "skipped" in warning


def test_too_many_unreadable_images_stop_with_one_line_naming_the_folder(tmp_path, monkeypatch):
    _unreadable(monkeypatch, "locked.png")
    dataset = load_folder(str(_folder_with_bad_files(tmp_path / "images")), "train", load_size=8)
    stream = BatchStream(dataset, batch_size=8, workers=0, max_bad_fraction=0.1)  # 4 of 24 is 17%
    with pytest.raises(UserError) as error:
        list(stream.epoch(seed=0, epoch=0, drop_last=False))
    message = str(error.value)
    assert "\n" not in message and "images" in message and "--max-bad-fraction 0.1" in message


def test_evaluation_splits_leave_unreadable_images_out_and_keep_labels_aligned(tmp_path, monkeypatch, capsys):
    root = tmp_path / "labelled"
    for label, colour in (("dark", (20, 20, 20)), ("light", (230, 230, 230))):
        (root / label).mkdir(parents=True)
        for i in range(3):
            _rgb(colour=colour).save(root / label / f"{i}.png")
    (root / "dark" / "broken.png").write_text("not an image")
    (root / "light" / "locked.png").write_bytes(b"")
    _unreadable(monkeypatch, "locked.png")
    dataset = load_folder(str(root), "train", load_size=8)

    images, labels, unreadable = data.dataset_images(dataset, 8)
    assert unreadable == 2 and len(images) == len(labels) == 6
    light = dataset.classes.index("light")
    assert torch.equal(labels == light, images.float().mean(dim=(1, 2, 3)) > 128)  # each label kept with its image
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "2 of 8" in warning and "left out" in warning
    assert str(root / "dark" / "broken.png") in warning  # the file itself is named, not a folder beside it


def test_evaluation_split_with_no_readable_image_is_one_line(tmp_path):
    root = tmp_path / "junk"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_text("no")
    with pytest.raises(UserError, match="none of the 1 images"):
        data.dataset_images(load_folder(str(root), "train", load_size=8), 8)


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda root: None, "no such folder"),
        (lambda root: root.mkdir(), "no image files"),
        (lambda root: root.write_text("x"), "not a folder"),
    ],
)
def test_missing_or_empty_data_path_is_one_line(tmp_path, setup, expected):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(UserError, match=expected) as error:
        load_folder(str(root), "train", load_size=8)
    assert str(root) in str(error.value)


def test_an_in_memory_split_on_the_device_gives_the_same_batches_in_the_same_order():
    from byol.data.datasets import ImageDataset

    generator = torch.Generator().manual_seed(0)
    dataset = ImageDataset(
        "toy",
        1,
        8,
        (0.5,),
        (0.5,),
        images=torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=generator),
        labels=torch.arange(40),
    )
    for rank in (0, 1):
        host = list(BatchStream(dataset, 8, rank=rank, world_size=2).epoch(seed=3, epoch=1, start=2))
        device = list(BatchStream(dataset, 8, rank=rank, world_size=2, device=torch.device("cpu")).epoch(3, 1, 2))
        assert len(host) == len(device) == 3
        for (a, la), (b, lb) in zip(host, device):
            assert torch.equal(a, b) and torch.equal(la, lb) and b.device.type == "cpu"
