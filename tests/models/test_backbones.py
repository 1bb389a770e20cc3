"""Encoders by name: widths, stems, and errors in library words."""

import pytest
import torch
from torch import nn

from byol import build_backbone
from byol.evaluation.export import read_encoder as load_encoder
from byol.models.backbones import resolve_stem
from byol.runtime.checkpoint import EncoderInfo, save_weights


@pytest.mark.parametrize("name,expected", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_backbone_feature_dims_and_width(name, expected):
    full = build_backbone(name, width=1.0, image_size=32)
    assert full.feature_dim == expected
    assert full(torch.randn(2, 3, 32, 32)).shape == (2, expected)
    quarter = build_backbone(name, width=0.25, image_size=32, in_channels=1)
    assert quarter(torch.randn(2, 1, 32, 32)).shape == (2, expected // 4)


def test_cifar_stem_for_small_images_imagenet_stem_for_large():
    small = build_backbone("resnet18", image_size=32)
    large = build_backbone("resnet18", image_size=224)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)


def test_cifar_pool_stem_halves_the_resolution_and_evaluation_rebuilds_it(tmp_path):
    pooled = build_backbone("resnet18", width=0.25, image_size=28, in_channels=1, stem="cifar-pool")
    assert isinstance(pooled.maxpool, nn.MaxPool2d) and pooled.conv1.stride == (1, 1)
    stem_out = pooled.maxpool(pooled.relu(pooled.bn1(pooled.conv1(torch.randn(2, 1, 28, 28)))))
    assert stem_out.shape[-2:] == (14, 14)
    info = EncoderInfo("resnet18", 0.25, 1, 28, pooled.feature_dim, "fashion-mnist", (0.5,), (0.5,), "cifar-pool")
    save_weights(tmp_path / "e.safetensors", pooled.state_dict(), info.to_metadata())
    loaded, loaded_info = load_encoder(tmp_path / "e.safetensors")
    assert loaded_info.stem == "cifar-pool" and isinstance(loaded.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize(
    "call, named",
    [
        (lambda: build_backbone("vgg11"), "unknown backbone 'vgg11'"),
        (lambda: build_backbone("resnet18", width=0), "width must be positive"),
        (lambda: build_backbone("resnet18", norm="layer"), "unknown norm 'layer'"),
        (lambda: resolve_stem("big", 32), "unknown stem 'big'"),
    ],
)
def test_bad_choices_raise_value_error_in_library_words(call, named):
    with pytest.raises(ValueError, match=named) as error:
        call()
    assert "--" not in str(error.value)  # no command-line wording in the library
