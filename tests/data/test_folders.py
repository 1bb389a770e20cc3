"""Real folders: hidden files, one class index for every split, EXIF orientation, link loops, and the
decoded cache (reused, rebuilt when the folder changes, never trusted when torn)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from byol.data import folders
from byol.data.datasets import BatchStream, load_folder
from byol.data.folders import DecodedCache, decode_image, scan_images
from byol.evaluation.report import evaluate_encoder
from byol.runtime.checkpoint import EncoderInfo, save_weights
from byol.runtime.errors import UserError
from tests.conftest import TINY_NETWORK, command_line, tiny_resnet

COLOURS = {"apple": (220, 30, 30), "banana": (230, 220, 40), "cherry": (120, 0, 40), "grape": (90, 40, 160)}


def make_split(root, classes, per_class=6, size=(20, 16)):
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = tuple(min(255, c + 3 * i) for c in COLOURS[name])
            Image.new("RGB", size, colour).save(root / name / f"{i:03d}.png")


def test_hidden_entries_are_left_out_and_not_counted_as_unreadable(tmp_path):
    make_split(tmp_path, ["apple", "banana"])
    for image in list(tmp_path.rglob("*.png")):
        (image.parent / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    (tmp_path / ".thumbnails").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / ".thumbnails" / "t.png")
    (tmp_path / "__MACOSX" / "apple").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "apple" / "._000.png").write_bytes(b"junk")
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    scan = scan_images(tmp_path)
    assert len(scan.files) == 12 and scan.hidden == 14 and scan.other == 1  # 12 ._ files, .thumbnails, __MACOSX
    dataset = load_folder(str(tmp_path), "train", load_size=8)
    assert dataset.classes == ["apple", "banana"]  # no `.thumbnails` or `__MACOSX` class
    stream = BatchStream(dataset, batch_size=4, workers=0, max_bad_fraction=0.0)  # strict: any bad file stops
    assert sum(len(images) for images, _ in stream.epoch(0, 0)) == 12 and stream.bad_images == 0


def test_a_test_split_is_numbered_by_the_training_splits_class_names(tmp_path):
    make_split(tmp_path / "train", ["apple", "banana", "cherry", "grape"])
    make_split(tmp_path / "test", ["banana", "cherry", "grape"], per_class=3)  # no apple in test
    train = load_folder(str(tmp_path), "train", load_size=8)
    test = load_folder(str(tmp_path), "test", load_size=8, classes=train.classes)
    assert test.classes == train.classes
    assert [train.classes[label] for label in test.labels.tolist()] == [p.parent.name for p in test.files]


def test_a_class_only_in_the_test_split_is_one_line_naming_it(tmp_path):
    make_split(tmp_path / "train", ["apple", "banana"])
    make_split(tmp_path / "test", ["banana", "cherry"], per_class=2)
    train = load_folder(str(tmp_path), "train", load_size=8)
    with pytest.raises(UserError, match="class 'cherry' is not among the 2 classes of the training split") as error:
        load_folder(str(tmp_path), "test", load_size=8, classes=train.classes)
    assert str(tmp_path / "test" / "cherry") in str(error.value) and "\n" not in str(error.value)


def test_eval_scores_a_test_split_that_lacks_a_class_correctly(tmp_path):
    """Numbered on its own, this test split's labels were each shifted by one: kNN near 0% instead of 100%."""
    make_split(tmp_path / "data" / "train", ["apple", "banana", "cherry", "grape"])
    make_split(tmp_path / "data" / "test", ["banana", "cherry", "grape"], per_class=3)
    (tmp_path / "data" / "train" / "empty").mkdir()  # an empty class folder is no class
    encoder = tiny_resnet()
    info = EncoderInfo("resnet18", 0.125, 3, 16, encoder.feature_dim, "folder", (0.5,) * 3, (0.25,) * 3)
    save_weights(tmp_path / "encoder.safetensors", encoder.state_dict(), info.to_metadata())
    report = evaluate_encoder(
        str(tmp_path / "encoder.safetensors"), ["knn"], "folder", str(tmp_path / "data"), "cpu", quiet=True, workers=0
    )
    assert report["raw_pixel_knn20_top1"] == 100.0  # every class a colour: raw pixels cannot miss
    assert report["_classes"] == ["apple", "banana", "cherry", "grape"]


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((6, 10, 3), dtype=np.uint8)
    pixels[:, :5] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 5:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[folders.EXIF_ORIENTATION] = 6  # "rotate 90° clockwise to view"
    image.save(tmp_path / "tagged.jpg", exif=exif, quality=100)
    Image.fromarray(pixels).save(tmp_path / "untagged.jpg", quality=100)
    upright = decode_image(tmp_path / "tagged.jpg", 6).float()
    sideways = decode_image(tmp_path / "untagged.jpg", 6).float()
    assert upright[0, 0].mean() > 200 and upright[2, -1].mean() > 200  # red on top, blue at the bottom
    assert (upright - sideways).abs().mean() > 50  # not the untagged pixels


def test_large_jpegs_are_decoded_at_a_reduced_scale_close_to_the_full_decode(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    rows, columns = np.mgrid[0:1200, 0:1600]
    pixels = np.stack([columns * 255 // 1599, rows * 255 // 1199, 255 - columns * 255 // 1599], axis=2)
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    decoded_sizes, real_draft = [], JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        result = real_draft(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    drafted = decode_image(tmp_path / "big.jpg", 64).float()
    assert decoded_sizes == [(200, 150)]  # 1/8 scale: both sides still at least 64
    with Image.open(tmp_path / "big.jpg") as full:
        reference = np.asarray(full.convert("RGB").resize((85, 64), Image.BICUBIC).crop((10, 0, 74, 64)))
    assert (drafted - torch.from_numpy(reference.copy()).permute(2, 0, 1).float()).abs().mean() < 3


def test_a_link_loop_is_harmless(tmp_path):
    make_split(tmp_path, ["apple"], per_class=2)
    os.symlink(tmp_path, tmp_path / "apple" / "loop")
    scan = scan_images(tmp_path)
    assert len(scan.files) == 2 and len(scan.repeated_folders) == 1


def test_a_folder_of_non_images_is_one_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("hello")
    with pytest.raises(UserError, match="no image files found"):
        load_folder(str(tmp_path), "train", load_size=8)


def counting_decodes(monkeypatch) -> list:
    calls, real = [], folders.decode_image

    def decode(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(folders, "decode_image", decode)
    return calls


def test_the_decoded_cache_is_filled_once_then_read(tmp_path, monkeypatch):
    make_split(tmp_path / "images", ["apple", "banana"], per_class=8)
    dataset = load_folder(str(tmp_path / "images"), "train", load_size=8)
    calls = counting_decodes(monkeypatch)
    cache = DecodedCache(tmp_path / "cache", dataset.files, 8)
    stream = BatchStream(dataset, batch_size=4, workers=0, cache=cache)
    first = torch.cat([images for images, _ in stream.epoch(0, 0)])
    assert len(calls) == 16 and cache.filled() == 16
    calls.clear()
    again = BatchStream(dataset, batch_size=4, workers=0, cache=DecodedCache(tmp_path / "cache", dataset.files, 8))
    second = torch.cat([images for images, _ in again.epoch(0, 0)])
    assert calls == [] and torch.equal(first, second)  # the same pixels, without decoding


def test_a_changed_folder_or_size_gets_a_new_cache_and_a_torn_slot_is_decoded_again(tmp_path, monkeypatch):
    make_split(tmp_path / "images", ["apple"], per_class=4)
    dataset = load_folder(str(tmp_path / "images"), "train", load_size=8)
    cache = DecodedCache(tmp_path / "cache", dataset.files, 8)
    list(BatchStream(dataset, batch_size=4, workers=0, cache=cache).epoch(0, 0))
    assert cache.filled() == 4
    assert DecodedCache(tmp_path / "cache", dataset.files, 16).stem != cache.stem  # another load size
    # a file that changed after the cache was written (here: while it was in use) makes a new cache
    Image.new("RGB", (20, 16), (1, 2, 3)).save(dataset.files[0])
    os.utime(dataset.files[0], ns=(1, 1))
    changed = DecodedCache(tmp_path / "cache", dataset.files, 8)
    assert changed.stem != cache.stem and changed.filled() == 0
    # a slot whose pixels no longer match their checksum is not trusted
    with open(cache.stem.with_suffix(".images"), "r+b") as f:
        f.seek(5)
        f.write(b"\xff\xfe")
    calls = counting_decodes(monkeypatch)
    state, image = cache.read(0)
    assert image is None and state == DecodedCache.NOT_YET
    list(BatchStream(dataset, batch_size=4, workers=0, cache=cache).epoch(0, 0))
    assert len(calls) == 1


def test_training_with_the_cache_from_the_cli(tmp_path):
    make_split(tmp_path / "images", ["apple", "banana"], per_class=8)
    args = [
        sys.executable,
        "-m",
        "byol",
        "train",
        "--dataset",
        "folder",
        "--data",
        str(tmp_path / "images"),
        "--image-size",
        "16",
        *command_line(TINY_NETWORK),
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--no-tensorboard",
        "--knn-every",
        "0",
        "--cache-decoded",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "cache").glob("*.images"))) == 1
    assert "decoded_workers" not in result.stderr and (tmp_path / "run" / "backbone.safetensors").exists()


def test_eval_and_embed_of_a_folder_run_use_the_data_it_recorded_and_name_it_when_moved(tmp_path, capsys):
    from byol.cli import main

    make_split(tmp_path / "images" / "train", ["apple", "banana"], per_class=8)
    make_split(tmp_path / "images" / "test", ["apple", "banana"], per_class=3)
    tiny = command_line(TINY_NETWORK)
    run = str(tmp_path / "run")
    trained = main(
        ["train", "--dataset", "folder", "--data", str(tmp_path / "images"), "--image-size", "16", *tiny]
        + ["--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0", "--device", "cpu"]
        + ["--precision", "fp32"]
        + ["--no-tensorboard", "--knn-every", "0", "--out", run, "--quiet"]
    )
    assert trained == 0
    assert main(["eval", "--checkpoint", run, "--protocol", "knn", "--no-baselines", "--workers", "0", "--json"]) == 0
    assert main(["embed", "--checkpoint", run, "--out", str(tmp_path / "f.npy"), "--workers", "0"]) == 0
    assert np.load(tmp_path / "f.npy").shape[0] == 22  # every image under the recorded folder
    capsys.readouterr()
    (tmp_path / "images").rename(tmp_path / "moved")
    assert main(["eval", "--checkpoint", run, "--protocol", "knn", "--no-baselines", "--workers", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(tmp_path / "images") in error and "--data" in error
