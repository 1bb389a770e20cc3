"""Convolutions kept off a kernel that crashes.

oneDNN 3.12's AVX-512 kernel for the weight gradient of a strided 1×1 convolution in channels-last
fp32 crashes the process (SIGSEGV, or glibc's "double free or corruption") for some shapes: narrow
(2–8 input channels) on maps of 56 px and more, seen on AMD Zen 4 and Zen 5 with torch 2.14.1. A
narrow ResNet's downsampling shortcut at 224 px is such a convolution. A 1×1 convolution with stride s
is the stride-1 convolution of every s-th pixel, so on the CPU a narrow one (fewer than
`NARROW_CHANNELS` input channels, twice the widest seen crashing) in channels-last is computed that way: the same
products (forward and input gradient to the bit, the weight gradient to float round-off), through
stride-1 kernels that do not crash. Wider ones keep the strided kernel, which is up to 2× faster for
them. The bug, its reproduction and the cost: docs/reliability.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NARROW_CHANNELS = 16


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, module: nn.Conv2d) -> torch.Tensor:
    """`module`'s convolution of `x` with `weight`; a narrow strided 1×1 one of a channels-last CPU tensor (the
    crashing case) as a subsample + 1×1."""
    pointwise = module.kernel_size == (1, 1) and module.padding in ((0, 0), 0) and module.dilation == (1, 1)
    narrow_strided = pointwise and module.stride != (1, 1) and module.in_channels < NARROW_CHANNELS
    if narrow_strided and x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last):
        row_step, column_step = module.stride
        return F.conv2d(x[:, :, ::row_step, ::column_step], weight, bias, 1, 0, 1, module.groups)
    return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)


class SafeConv2d(nn.Conv2d):
    """nn.Conv2d computed by `conv2d` above (same parameters, same state_dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, self)


def conv_like(
    conv: nn.Conv2d, cls: type = nn.Conv2d, in_channels: int | None = None, initialise: bool = True
) -> nn.Conv2d:
    """A new `cls` with `conv`'s kernel, stride, padding, dilation, groups, bias and padding mode, and its own
    parameters; `initialise=False` leaves them uninitialised, drawing no random numbers."""
    shape = (in_channels or conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    args = (*shape, conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    return cls(*args) if initialise else nn.utils.skip_init(cls, *args)


def make_convs_safe_(module: nn.Module) -> nn.Module:
    """Every plain narrow strided 1×1 nn.Conv2d in `module` becomes a SafeConv2d with the same parameters; in place."""
    for name, child in module.named_children():
        narrow = child.in_channels < NARROW_CHANNELS if isinstance(child, nn.Conv2d) else False
        if type(child) is nn.Conv2d and narrow and child.kernel_size == (1, 1) and child.stride != (1, 1):
            # skip_init: no initialisation of its own, which would draw random numbers and shift every later layer's
            safe = conv_like(child, SafeConv2d, initialise=False)
            safe.weight, safe.bias = child.weight, child.bias
            setattr(module, name, safe)
        else:
            make_convs_safe_(child)
    return module
