"""The strided 1×1 convolutions of a narrow ResNet stay off oneDNN's crashing AVX-512 kernel
(byol/models/conv.py): same results, no native crash. The crash kills the process, so it runs in subprocesses."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byol import build_backbone
from byol.models.conv import NARROW_CHANNELS, SafeConv2d

# torch alone: the reproduction reported upstream (docs/reliability.md)
TORCH_REPRO = """
import torch, torch.nn as nn
conv = nn.Conv2d(8, 16, 1, 2, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(16, 8, 56, 56).contiguous(memory_format=torch.channels_last)
conv(x).sum().backward()
"""
# ours: the narrow ResNet-18 whose downsampling shortcut is that convolution, as `byol train` runs it
OURS = """
import torch
from byol import build_backbone
encoder = build_backbone("resnet18", width=0.125, image_size=224).to(memory_format=torch.channels_last)
x = torch.randn(16, 3, 224, 224).contiguous(memory_format=torch.channels_last)
encoder(x).square().mean().backward()
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_a_narrow_resnet_at_224_px_trains_in_channels_last_fp32_where_torch_alone_crashes():
    ours = run(OURS)
    assert ours.returncode == 0, ours.stderr[-2000:]
    control = run(TORCH_REPRO)
    if control.returncode == 0:
        pytest.skip(
            "torch's own strided 1×1 convolution did not crash on this CPU (the bug is in AVX-512 kernels); ours ran"
        )
    assert control.returncode < 0 or control.returncode == 134  # killed by a signal: the bug still reproduces


def test_the_safe_convolution_computes_what_the_strided_one_does():
    torch.manual_seed(0)
    plain = nn.Conv2d(8, 16, 1, 2, bias=False)
    safe = SafeConv2d(8, 16, 1, 2, bias=False)
    safe.weight = nn.Parameter(plain.weight.detach().clone())
    x = torch.randn(4, 8, 20, 20)  # contiguous fp32: torch's own path does not crash here
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_plain, out_safe = plain(xa), safe(xb)
    gradient = torch.randn_like(out_plain)
    out_plain.backward(gradient)
    out_safe.backward(gradient)
    assert torch.equal(out_safe, out_plain) and torch.equal(xb.grad, xa.grad)
    torch.testing.assert_close(safe.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)
    assert torch.equal(F.conv2d(x, plain.weight, stride=2), safe(x))


def test_only_narrow_strided_pointwise_convolutions_are_swapped_and_weights_keep_their_names():
    narrow = build_backbone("resnet18", width=0.125, image_size=224)
    wide = build_backbone("resnet18", width=1.0, image_size=224)
    assert isinstance(narrow.layer2[0].downsample[0], SafeConv2d)  # 8 input channels
    assert all(type(m) is nn.Conv2d for m in wide.modules() if isinstance(m, nn.Conv2d))  # 64 and more
    assert narrow.layer3[0].downsample[0].in_channels >= NARROW_CHANNELS
    assert "layer2.0.downsample.0.weight" in narrow.state_dict()


def test_swapping_in_the_safe_convolutions_draws_no_random_numbers(monkeypatch):
    from byol.models import conv

    torch.manual_seed(0)
    safe = build_backbone("resnet18", width=0.125, image_size=224)
    after_safe = torch.rand(1)
    monkeypatch.setattr(conv, "NARROW_CHANNELS", 0)  # nothing swapped
    torch.manual_seed(0)
    plain = build_backbone("resnet18", width=0.125, image_size=224)
    assert torch.equal(torch.rand(1), after_safe)  # the layers built after it are initialised as before
    assert all(torch.equal(a, b) for a, b in zip(safe.state_dict().values(), plain.state_dict().values()))
