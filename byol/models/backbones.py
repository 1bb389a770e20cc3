"""Encoders by name: ResNets with a width multiplier and a CIFAR stem for small images (`resnet18`,
`resnet34`, `resnet50`), any torchvision classification model (`torchvision:NAME`) or timm model
(`timm:NAME`) (zoo.py); every one maps images to (B, D) features and carries `feature_dim`."""

from __future__ import annotations

import torch
from torch import nn

from byol.models import zoo
from byol.models.norm import check_norm

# name → (torchvision's block, blocks per stage); resnets.py builds them. Importing torchvision takes over a
# second (it loads torch._dynamo), so nothing here does until a ResNet is built: `byol --help` and option
# checks do not wait for it.
ARCHITECTURES = {
    "resnet18": ("BasicBlock", [2, 2, 2, 2]),
    "resnet34": ("BasicBlock", [3, 4, 6, 3]),
    "resnet50": ("Bottleneck", [3, 4, 6, 3]),
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


def backbone_problem(name: str, width: float = 1.0, stem: str = "auto", norm: str = "batch") -> str | None:
    """What is wrong with a backbone name and the options that go with it, or None."""
    if name.startswith(zoo.PREFIXES):
        if norm != "batch":
            return "--norm group-ws applies to the resnet18/34/50 backbones; a library's model keeps its own norms"
        return zoo.problem(name)
    if name not in ARCHITECTURES:
        return f"unknown backbone '{name}'; choose one of {', '.join(ARCHITECTURES)}, torchvision:NAME or timm:NAME"
    return None


def build_backbone(
    name: str, width: float = 1.0, image_size: int = 224, in_channels: int = 3, stem: str = "auto", norm: str = "batch"
) -> nn.Module:
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
    from byol.models.resnets import WideResNet, block_named

    block, layers = ARCHITECTURES[name]
    return WideResNet(
        block_named(block), layers, width=width, in_channels=in_channels, stem=resolve_stem(stem, image_size), norm=norm
    )


def feature_size(backbone: nn.Module, input_shape: tuple[int, int, int] | None = None) -> int:
    """The size D of the (B, D) features `backbone` returns: what it declares (`feature_dim`, or timm's
    `num_features` when `num_classes=0`), else a dry run on `input_shape`, on the size the backbone declares
    (a ViT's), or on 64×64 images with its first convolution's channels. A ValueError says what to pass when
    none works."""
    declared = getattr(backbone, "feature_dim", None)
    if declared is None and getattr(backbone, "num_classes", None) == 0:  # a timm model without its head
        declared = getattr(backbone, "num_features", None)
    if isinstance(declared, int):
        return declared
    shape = input_shape or zoo.declared_input_shape(backbone) or (zoo.first_conv_in_channels(backbone) or 3, 64, 64)
    try:
        return infer_feature_dim(backbone, shape)
    except (RuntimeError, AssertionError, TypeError) as error:  # a fixed-size model refusing 64×64, say
        raise ValueError(
            f"could not find the backbone's feature size by a dry run on {shape} images "
            f"({str(error).splitlines()[0][:120]}): pass feature_dim=D, or input_shape=(C, H, W) "
            "of the images it takes"
        ) from None


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
