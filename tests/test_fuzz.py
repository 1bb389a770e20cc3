"""Property tests (hypothesis): image decoding and config parsing never fail in an unplanned way.

Whatever bytes sit behind an image extension, decoding gives a (3, S, S) uint8 image or a reason,
never an exception; whatever a YAML file or a command line holds, the config is valid or the error is
one UserError line. Counts and findings: docs/reliability.md.
"""

import io
import math
import os

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from byol.data.folders import decode_or_reason
from byol.runtime.errors import UserError
from byol.training.config import FIELDS, TrainConfig, merge, read_yaml

# 300 per property in the default suite; BYOL_FUZZ_EXAMPLES=5000 for the longer runs in docs/reliability.md.
FUZZ = settings(
    max_examples=int(os.environ.get("BYOL_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SIZE = 12


def _assert_decoded_or_refused(path):
    image, reason = decode_or_reason(path, SIZE)
    if image is None:
        assert reason and "\n" not in reason
    else:
        assert image.shape == (3, SIZE, SIZE) and str(image.dtype) == "torch.uint8" and reason == ""
    return image


@FUZZ
@given(content=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tiff", ".webp"]))
def test_arbitrary_bytes_decode_or_are_refused(tmp_path, content, suffix):
    path = tmp_path / f"file{suffix}"
    path.write_bytes(content)
    _assert_decoded_or_refused(path)


MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "LA"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


@FUZZ
@given(
    mode=st.sampled_from(MODES),
    fmt=st.sampled_from(FORMATS),
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    keep=st.floats(0.0, 1.0),
)
def test_real_images_of_every_mode_decode_and_truncated_ones_never_crash(
    tmp_path, mode, fmt, width, height, seed, keep
):
    rng = np.random.default_rng(seed)
    pixels = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode in ("I;16", "I", "F"):
        grey = rng.integers(0, 65536, (height, width)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
        image = Image.fromarray(grey)
    else:
        image = pixels.convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # this format cannot store this mode; not an input a user could have
    content = buffer.getvalue()
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(content)
    assert _assert_decoded_or_refused(path) is not None, (mode, fmt)  # a whole, valid file always decodes
    path.write_bytes(content[: int(len(content) * keep)])
    _assert_decoded_or_refused(path)


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
)
_KEYS = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(max_size=12))


@FUZZ
@given(values=st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_any_config_values_give_a_valid_config_or_one_line_error(values):
    try:
        config = merge(TrainConfig(), values, "fuzz.yaml").validate()
    except UserError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert isinstance(config, TrainConfig) and config.batch_size >= 2
        assert all(math.isfinite(v) for v in vars(config).values() if isinstance(v, float))


@FUZZ
@given(
    text=st.one_of(st.text(max_size=200), st.dictionaries(_KEYS, _VALUES, max_size=6).map(lambda d: yaml.safe_dump(d)))
)
def test_any_yaml_file_gives_options_or_one_line_error(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        values = read_yaml(path)
    except UserError as error:
        assert str(path) in str(error) and "\n" not in str(error)
        return
    try:
        merge(TrainConfig(), values, str(path)).validate()
    except UserError as error:
        assert "\n" not in str(error)


def test_hypothesis_is_installed_for_these_tests():
    pytest.importorskip("hypothesis")
