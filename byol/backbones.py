"""Encoders by name: ResNets with a width multiplier and a CIFAR stem for small images (`resnet18`,
`resnet34`, `resnet50`), any torchvision classification model (`torchvision:NAME`) or timm model
(`timm:NAME`) (zoo.py); every one maps images to (B, D) features and carries `feature_dim`."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet

from . import zoo
from .conv import make_convs_safe_
from .norm import check_norm, group_norm, weight_standardize_

ARCHITECTURES = {
    "resnet18": (resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (resnet.Bottleneck, [3, 4, 6, 3]),
}

# Images this small lose too much to a 7×7/2 conv plus max-pool; the CIFAR stem keeps them.
CIFAR_STEM_MAX_SIZE = 64
# imagenet: 7×7/2 conv + 3×3/2 max-pool (÷4). cifar: 3×3/1 conv, no pool (BYOL's CIFAR variant).
# cifar-pool: the CIFAR conv then a 2×2 max-pool (÷2), 4× cheaper than `cifar` for the same width —
# what lets a CPU train for several epochs in minutes.
STEMS = ("auto", "imagenet", "cifar", "cifar-pool")


def resolve_stem(stem: str, image_size: int) -> str:
    if stem not in STEMS:
        raise ValueError(f"unknown stem '{stem}'; choose one of {', '.join(STEMS)}")
    if stem == "auto":
        return "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    return stem


class WideResNet(resnet.ResNet):
    """torchvision's ResNet with every stage's channel count multiplied by `width`.

    The output is the globally average-pooled feature vector (`fc` is an Identity); its size is
    `feature_dim`.
    """

    def __init__(self, block, layers, width: float = 1.0, in_channels: int = 3, stem: str = "imagenet",
                 norm: str = "batch"):
        self._width = width
        self._stem_width = max(int(round(64 * width)), 1)
        self._first_layer = True
        norm_layer = group_norm if norm == "group-ws" else nn.BatchNorm2d
        super().__init__(block, layers, norm_layer=norm_layer)
        if stem in ("cifar", "cifar-pool"):
            self.conv1 = nn.Conv2d(in_channels, self._stem_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.MaxPool2d(2) if stem == "cifar-pool" else nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, self._stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self._stem_width)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        if norm == "group-ws":
            weight_standardize_(self)  # its convolutions avoid the crashing kernel themselves (conv.conv2d)
        else:
            make_convs_safe_(self)  # the downsampling shortcuts: byol/conv.py
        self.feature_dim = max(int(round(512 * width)), 1) * block.expansion
        self.fc = nn.Identity()

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if self._first_layer:
            # torchvision hard-codes the stem at 64 channels; the first stage must read ours.
            self.inplanes = self._stem_width
            self._first_layer = False
        return super()._make_layer(block, max(int(round(planes * self._width)), 1), blocks, stride, dilate)


def backbone_problem(name: str, width: float = 1.0, stem: str = "auto", norm: str = "batch") -> str | None:
    """What is wrong with a backbone name and the options that go with it, or None."""
    if name.startswith(zoo.PREFIXES):
        if norm != "batch":
            return "--norm group-ws applies to the resnet18/34/50 backbones; a library's model keeps its own norms"
        return zoo.problem(name)
    if name not in ARCHITECTURES:
        return (f"unknown backbone '{name}'; choose one of {', '.join(ARCHITECTURES)}, torchvision:NAME or "
                "timm:NAME")
    return None


def build_backbone(name: str, width: float = 1.0, image_size: int = 224, in_channels: int = 3,
                   stem: str = "auto", norm: str = "batch") -> nn.Module:
    """An encoder by name. A ResNet's stem `auto` is the CIFAR stem for images of at most 64 px, else
    ImageNet's; `torchvision:NAME` and `timm:NAME` are those libraries' models without their heads, built as
    they are (`width` and `stem` are the ResNets' and ignored for them)."""
    if name.startswith(zoo.PREFIXES):
        reason = backbone_problem(name, width, stem, norm)
        if reason:
            raise ValueError(reason)
        return zoo.build(name, image_size, in_channels)
    if name not in ARCHITECTURES:
        raise ValueError(backbone_problem(name))
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    check_norm(norm)
    block, layers = ARCHITECTURES[name]
    return WideResNet(block, layers, width=width, in_channels=in_channels, stem=resolve_stem(stem, image_size),
                      norm=norm)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def feature_size(backbone: nn.Module, input_shape: tuple[int, int, int] | None = None) -> int:
    """The size D of the (B, D) features `backbone` returns: what it declares (`feature_dim`, or timm's
    `num_features` when `num_classes=0`), else a dry run on `input_shape`, on the size the backbone declares (a ViT's), or on
    64×64 images with its first convolution's channels. A ValueError says what to pass when none works."""
    declared = getattr(backbone, "feature_dim", None)
    if declared is None and getattr(backbone, "num_classes", None) == 0:  # a timm model without its head
        declared = getattr(backbone, "num_features", None)
    if isinstance(declared, int):
        return declared
    shape = input_shape or zoo.declared_input_shape(backbone) or (zoo.first_conv_in_channels(backbone) or 3, 64, 64)
    try:
        return infer_feature_dim(backbone, shape)
    except (RuntimeError, AssertionError, TypeError) as error:  # a fixed-size model refusing 64×64, say
        raise ValueError(f"could not find the backbone's feature size by a dry run on {shape} images "
                         f"({str(error).splitlines()[0][:120]}): pass feature_dim=D, or input_shape=(C, H, W) "
                         "of the images it takes") from None


@torch.no_grad()
def infer_feature_dim(backbone: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Run two dummy images through the backbone in eval mode (BN statistics are untouched)."""
    was_training = backbone.training
    backbone.eval()
    try:
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        out = backbone(torch.zeros(2, *input_shape, device=device))
    finally:
        backbone.train(was_training)
    if out.ndim != 2:
        raise ValueError(
            f"the backbone must map images to (batch, features) vectors; it returned shape {tuple(out.shape)}. "
            "Remove its classifier head and pool its output, or pass feature_dim."
        )
    return out.shape[1]
