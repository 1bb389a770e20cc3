"""torchvision's ResNet with a width multiplier and the small-image stems (backbones.py names them)."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet

from byol.models.conv import make_convs_safe_
from byol.models.norm import group_norm, weight_standardize_


def block_named(name: str) -> type[nn.Module]:
    return getattr(resnet, name)  # BasicBlock or Bottleneck


class WideResNet(resnet.ResNet):
    """torchvision's ResNet with every stage's channel count multiplied by `width`.

    The output is the globally average-pooled feature vector (`fc` is an Identity); its size is
    `feature_dim`.
    """

    def __init__(
        self, block, layers, width: float = 1.0, in_channels: int = 3, stem: str = "imagenet", norm: str = "batch"
    ):
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
            make_convs_safe_(self)  # the downsampling shortcuts: byol/models/conv.py
        self.feature_dim = max(int(round(512 * width)), 1) * block.expansion
        self.fc = nn.Identity()

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if self._first_layer:
            # torchvision hard-codes the stem at 64 channels; the first stage must read ours.
            self.inplanes = self._stem_width
            self._first_layer = False
        return super()._make_layer(block, max(int(round(planes * self._width)), 1), blocks, stride, dilate)
