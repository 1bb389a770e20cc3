"""`--decode gpu` (byol/data/gpu_decode.py): JPEGs decoded by torchvision's decoder a batch at a time, resized
and cropped as PIL's path does, everything else (and what that decoder refuses) through PIL, the same
skip-and-count rule for unreadable files. Run here with the CPU as the decoding device; `-m cuda` on nvjpeg."""

import pytest
import torch
from PIL import Image

from byol.data.datasets import BatchStream, load_folder
from byol.data.folders import EXIF_ORIENTATION, decode_image, decode_jpegs_on, exif_orientation
from byol.runtime.errors import UserError
from byol.training.config import resolve
from byol.training.run import gpu_decoding

# Flat blocks of distinct colours: JPEG keeps a flat block's colour within a few levels with any decoder, so
# pixels inside the blocks show whether two paths agree on orientation, scale and crop.
BLOCKS = [(230, 30, 30), (30, 200, 40), (40, 60, 220), (240, 220, 40), (20, 20, 20), (250, 250, 250)]


def blocks(width: int, height: int, columns: int = 3, rows: int = 2) -> Image.Image:
    image = Image.new("RGB", (width, height))
    for index, colour in enumerate(BLOCKS[: columns * rows]):
        column, row = index % columns, index // columns
        box = (
            column * width // columns,
            row * height // rows,
            (column + 1) * width // columns,
            (row + 1) * height // rows,
        )
        image.paste(colour, box)
    return image


def save_jpeg(path, image: Image.Image, orientation: int = 1):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, quality=95, exif=exif)
    return path


def largest_difference_inside_blocks(image: torch.Tensor, reference: torch.Tensor) -> int:
    """max |image − reference| over the pixels 3 px or more from any colour edge of the reference (most of
    it): a wrong orientation, scale or crop moves edges there, while two decoders agree on flat colour."""
    levels = reference.float()[None]
    spread = torch.nn.functional.max_pool2d(levels, 7, 1, 3) + torch.nn.functional.max_pool2d(-levels, 7, 1, 3)
    flat = spread[0].amax(0) <= 6
    assert flat.float().mean() > 0.3, "the reference is mostly edges: a test image too small"
    return int((image.int() - reference.int()).abs().amax(0)[flat].max())


@pytest.mark.parametrize(
    "width, height, orientation", [(240, 120, 1), (90, 300, 1), *((300, 200, o) for o in range(2, 9)), (64, 64, 3)]
)
def test_a_jpeg_decoded_by_the_batch_path_has_pil_s_orientation_scale_and_crop(tmp_path, width, height, orientation):
    path = save_jpeg(tmp_path / "a.jpg", blocks(width, height), orientation)
    encoded = path.read_bytes()
    assert exif_orientation(encoded) == orientation
    (batched,) = decode_jpegs_on([encoded], [orientation], 48, torch.device("cpu"))
    reference = decode_image(path, 48)
    assert batched.shape == reference.shape == (3, 48, 48) and batched.dtype == torch.uint8
    assert largest_difference_inside_blocks(batched, reference) <= 8


def folder(tmp_path):
    for name, colour in (("red", BLOCKS[0]), ("blue", BLOCKS[2])):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(6):
            save_jpeg(tmp_path / "images" / name / f"{i}.jpg", Image.new("RGB", (40 + 4 * i, 32), colour))
        Image.new("RGB", (36, 36), colour).save(tmp_path / "images" / name / "png.png")
    (tmp_path / "images" / "red" / "2.jpg").write_bytes(
        save_jpeg(tmp_path / "x.jpg", blocks(40, 32)).read_bytes()[:300]
    )
    return load_folder(str(tmp_path / "images"), "train", 24)


def test_the_stream_decodes_on_a_device_with_the_cpu_path_s_batches_and_skips(tmp_path):
    dataset = folder(tmp_path)
    batches = {}
    for name, decode_on in (("cpu path", None), ("batch path", torch.device("cpu"))):
        stream = BatchStream(dataset, 7, workers=0, decode_on=decode_on)
        batches[name] = list(stream.epoch(seed=0, epoch=0))
        assert stream.bad_images == 1 and "2.jpg" in str(dataset.files[next(iter(stream.bad_files))])
    for (cpu_images, cpu_labels), (images, labels) in zip(batches["cpu path"], batches["batch path"], strict=True):
        assert torch.equal(cpu_labels, labels) and images.shape == cpu_images.shape == (7, 3, 24, 24)
        assert all(largest_difference_inside_blocks(a, b) <= 8 for a, b in zip(images, cpu_images))


def test_gpu_decoding_is_refused_in_one_line_where_it_cannot_apply():
    with pytest.raises(UserError, match="--decode gpu: only folder images are decoded"):
        resolve(overrides={"decode": "gpu"})
    with pytest.raises(UserError, match="--decode gpu: nvjpeg needs a CUDA device, not --device cpu"):
        resolve(overrides={"decode": "gpu", "dataset": "folder", "device": "cpu"})
    with pytest.raises(UserError, match="--decode gpu: --cache-decoded keeps"):
        resolve(overrides={"decode": "gpu", "dataset": "folder", "cache_decoded": "/tmp/c"})
    cfg = resolve(overrides={"decode": "gpu", "dataset": "folder"})  # --device auto: known at the start
    with pytest.raises(UserError, match="--decode gpu: nvjpeg needs a CUDA device; this run is on cpu"):
        gpu_decoding(cfg, torch.device("cpu"))
    assert gpu_decoding(resolve(), torch.device("cpu")) is None


@pytest.mark.cuda
def test_nvjpeg_decodes_what_the_cpu_decoder_does(tmp_path):
    paths = [save_jpeg(tmp_path / f"{i}.jpg", blocks(100 + 30 * i, 120), 1 + 5 * (i % 2)) for i in range(4)]
    encoded = [path.read_bytes() for path in paths]
    orientations = [exif_orientation(one) for one in encoded]
    on_gpu = decode_jpegs_on(encoded, orientations, 64, torch.device("cuda"))
    on_cpu = decode_jpegs_on(encoded, orientations, 64, torch.device("cpu"))
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert gpu.is_cuda and largest_difference_inside_blocks(gpu.cpu(), cpu) <= 8
