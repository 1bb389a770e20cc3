"""Folders of image files: what counts as an image, how each is decoded, and a cache of decoded pixels.

- Scanning walks the tree with `os.scandir`, follows symbolic links once (a link loop is harmless),
  and leaves out hidden entries — dot-names, the `._name` AppleDouble files macOS copies beside every
  image, `__MACOSX` folders — without counting them as unreadable; what it left out is counted.
- Decoding turns any file PIL reads into RGB uint8 at a square `size`: EXIF orientation applied,
  JPEGs decoded at a reduced scale when they are much larger than needed (never below `size`), shorter
  side resized (bicubic), centre crop. A file that cannot be decoded gives a reason instead.
- `--decode gpu`: JPEGs are decoded on the GPU in batches (nvjpeg, `decode_jpegs_on`), turned upright by their
  EXIF orientation, and resized and cropped there with the same sizes (`square`); what it cannot decode goes
  to PIL.
- `DecodedCache` keeps those uint8 squares in one memory-mapped file, so later epochs skip decoding.
Measurements of each path: docs/data.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from byol.runtime.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
HIDDEN_FOLDERS = {"__MACOSX"}
EXIF_ORIENTATION = 0x0112


def is_hidden(name: str) -> bool:
    """Dot-names (which include AppleDouble `._name` files) and macOS's `__MACOSX` archive folders."""
    return name.startswith(".") or name in HIDDEN_FOLDERS


@dataclass
class Scan:
    """What a folder holds: image files (sorted) and what was left out, counted."""

    files: list[Path]
    hidden: int = 0  # hidden files and folders (a hidden folder counts once, whatever it holds)
    other: int = 0  # files that are not images by their extension
    repeated_folders: list[Path] = field(default_factory=list)  # reached twice through links (loops)


def scan_images(root: Path) -> Scan:
    """Every image file under `root`, streaming with os.scandir; links are followed, each folder once."""
    files, hidden, other, repeated = [], 0, 0, []
    visited = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            status = folder.stat()
            entries = list(os.scandir(folder))
        except OSError:
            continue  # vanished or unreadable sub-folder: nothing to read there
        if (status.st_dev, status.st_ino) in visited:
            repeated.append(folder)
            continue
        visited.add((status.st_dev, status.st_ino))
        for entry in entries:
            if is_hidden(entry.name):
                hidden += 1
                continue
            try:
                if entry.is_dir():
                    pending.append(Path(entry.path))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                    files.append(entry.path)
                else:
                    other += 1
            except OSError:  # a dangling link
                other += 1
    return Scan([Path(p) for p in sorted(files)], hidden, other, repeated)


# ---------------------------------------------------------------- decoding


def decode_image(path: Path, size: int) -> torch.Tensor:
    """RGB uint8 (3, size, size): EXIF orientation applied, shorter side resized to `size`, centre crop.
    Raises OSError/ValueError for a file that is not a readable image.

    Converts what can be converted: CMYK, palette (GIF, with transparency), grey, RGBA (alpha
    dropped), 16- and 32-bit grey (scaled to 8 bits, not clipped), any size down to 1×1.
    """
    with Image.open(path) as image:
        if image.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when that still leaves both sides at least `size`: the DCT does
            # the downscaling almost for free, and the bicubic resize below does the rest.
            image.draft(None, (size, size))
        image.load()  # decode now, so a truncated file fails here and not later
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)  # a phone's "rotate 90°" tag: pixels as the viewer shows them
        image = _to_rgb(image)
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((new_w, new_h), Image.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _to_rgb(image):
    if image.mode.startswith("I") or image.mode == "F":
        # PIL's own I;16 → RGB conversion clips at 255, which turns most 16-bit images white.
        array = np.asarray(image, dtype=np.float64)
        peak = float(array.max(initial=0.0))
        if image.mode == "F":
            full_scale = 1.0 if peak <= 1.0 else peak
        else:
            full_scale = 65535.0 if peak <= 65535 else peak
        grey = np.clip(array / full_scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_or_reason(path: Path, size: int) -> tuple[torch.Tensor | None, str]:
    """(`decode_image`, "") or (None, why the file is not a readable image)."""
    try:
        with warnings.catch_warnings():
            # PIL warns about corrupt metadata of files it still decodes; a bad file gets a reason instead.
            warnings.simplefilter("ignore")
            return decode_image(path, size), ""
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return None, (str(error).splitlines()[0][:160] if str(error).strip() else type(error).__name__)


JPEG_MAGIC = b"\xff\xd8\xff"
# EXIF orientation → what turns the stored pixels (C, H, W) upright, as PIL's exif_transpose does (tested)
UPRIGHT = {
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-1, -2),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-1, -2),
    6: lambda x: torch.rot90(x, -1, (-2, -1)),
    7: lambda x: x.transpose(-1, -2).flip(-1, -2),
    8: lambda x: torch.rot90(x, 1, (-2, -1)),
}


def is_jpeg(encoded: bytes) -> bool:
    return encoded[:3] == JPEG_MAGIC


def exif_orientation(encoded: bytes) -> int:
    """The EXIF orientation tag of an image file's bytes (1: stored upright), from its header alone."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except (OSError, ValueError, SyntaxError):
        return 1  # the decoder will say what is wrong with the file


def resized_sides(width: int, height: int, size: int) -> tuple[int, int]:
    """`decode_image`'s resize: the shorter side to `size`, the other in proportion (at least `size`)."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) on any device to (3, size, size) as `decode_image` does it: shorter side resized
    (bicubic, antialiased like PIL's), centre crop."""
    new_w, new_h = resized_sides(image.shape[2], image.shape[1], size)
    if (new_h, new_w) != tuple(image.shape[1:]):
        resized = torch.nn.functional.interpolate(
            image[None].float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        )
        image = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image[:, top : top + size, left : left + size]


def decode_jpegs_on(
    encoded: list[bytes], orientations: list[int], size: int, device: torch.device
) -> list[torch.Tensor | None]:
    """JPEG bytes to upright (3, size, size) uint8 squares on `device`, in one batched call (nvjpeg on CUDA);
    a batch that fails is decoded file by file, and a file that fails alone is None (the caller decodes it
    with PIL). `orientations`: each file's EXIF tag, applied here (torchvision applies it on the CPU only)."""
    images = _decode_jpegs([torch.frombuffer(bytearray(one), dtype=torch.uint8) for one in encoded], device)
    return [
        None if image is None else square(UPRIGHT.get(orientation, lambda x: x)(image), size)
        for image, orientation in zip(images, orientations, strict=True)
    ]


def _decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(files):
        with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec; its decoder still works
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)

    try:
        return decode(encoded) if encoded else []
    except RuntimeError as error:  # one bad file fails the batch: find it
        _reraise_device_failure(error)
    images = []
    for one in encoded:
        try:
            images.append(decode([one])[0])
        except RuntimeError as error:
            _reraise_device_failure(error)
            images.append(None)
    return images


def _reraise_device_failure(error: RuntimeError) -> None:
    # A CUDA error is the device's, not the file's, and it sticks: say so instead of blaming every file.
    if isinstance(error, getattr(torch, "AcceleratorError", ())):
        raise error


# ---------------------------------------------------------------- the decoded cache


class DecodedCache:
    """uint8 images of a folder at one load size, in one memory-mapped file, filled as they are decoded.

    The file's name is a digest of the load size and every file's path, size and modification time,
    so a changed folder or size gets a new cache and a stale one is never read. Each slot carries a
    state (0 not yet decoded, 1 decoded, 2 unreadable) and a CRC-32 of its pixels, checked on every read:
    a slot torn by a crash is decoded again, not trusted. Worker processes open the maps themselves.
    """

    NOT_YET, DECODED, UNREADABLE = 0, 1, 2

    def __init__(self, directory: Path | str, files: list[Path], size: int):
        self.size, self.count = size, len(files)
        digest = hashlib.sha256(f"byol-decoded-cache-v1 {size}\n".encode())
        for path in files:
            try:
                status = path.stat()
                digest.update(f"{path}\t{status.st_size}\t{status.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\tmissing\n".encode())
        self.directory = Path(directory)
        self.stem = self.directory / f"decoded-{size}px-{digest.hexdigest()[:20]}"
        self._maps, self._pid = None, None
        self._create()

    def _create(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            shape = (self.count, 3, self.size, self.size)
            for suffix, dtype, length in (
                (".images", np.uint8, int(np.prod(shape))),
                (".state", np.uint8, self.count),
                (".crc", np.uint32, self.count),
            ):
                path = self.stem.with_suffix(suffix)
                wanted = length * np.dtype(dtype).itemsize
                if not path.exists() or path.stat().st_size != wanted:
                    with open(path, "wb") as f:  # sparse: the disk fills as images are decoded
                        f.truncate(wanted)
            meta = {
                "format": "byol-decoded-cache-v1",
                "images": self.count,
                "size": self.size,
                "bytes": int(np.prod(shape)),
            }
            self.stem.with_suffix(".json").write_text(json.dumps(meta) + "\n")
        except OSError as error:
            raise UserError(
                f"{self.directory}: cannot create the decoded cache ({error.strerror or error}) "
                "(option --cache-decoded)"
            ) from None

    def _open(self):
        if self._maps is None or self._pid != os.getpid():  # a fresh map in each worker process
            images = np.memmap(
                self.stem.with_suffix(".images"), np.uint8, "r+", shape=(self.count, 3, self.size, self.size)
            )
            state = np.memmap(self.stem.with_suffix(".state"), np.uint8, "r+", shape=(self.count,))
            crc = np.memmap(self.stem.with_suffix(".crc"), np.uint32, "r+", shape=(self.count,))
            self._maps, self._pid = (images, state, crc), os.getpid()
        return self._maps

    def __getstate__(self):
        return {**self.__dict__, "_maps": None, "_pid": None}

    def read(self, index: int) -> tuple[int, torch.Tensor | None]:
        """(state, image): the image only when it is decoded and its checksum holds."""
        images, state, crc = self._open()
        status = int(state[index])
        if status != self.DECODED:
            return status, None
        pixels = np.array(images[index])
        if zlib.crc32(pixels.tobytes()) != int(crc[index]):
            return self.NOT_YET, None
        return status, torch.from_numpy(pixels)

    def write(self, index: int, image: torch.Tensor | None) -> None:
        """Store a decoded image (or mark the file unreadable); the state is written last."""
        images, state, crc = self._open()
        if image is None:
            state[index] = self.UNREADABLE
            return
        pixels = image.numpy()
        images[index] = pixels
        crc[index] = zlib.crc32(np.ascontiguousarray(pixels).tobytes())
        state[index] = self.DECODED

    def filled(self) -> int:
        return int(np.count_nonzero(self._open()[1]))
