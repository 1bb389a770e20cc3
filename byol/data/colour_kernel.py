"""The colour jitter and grayscale of a batch of views as one GPU kernel (Triton), registered as the torch
operation `byol::colour_jitter`.

On a GPU the augmentation is bound by kernel launches, not arithmetic: the four jitter operations, in each
image's own order, took about 500 launches per step as separate torch calls (benchmarks/augment_ops.py).
Here one program per image runs the whole chain on its pixels: brightness, contrast, saturation and hue at
the positions the image drew, each clipped to [0, 1], then grayscale. Contrast needs the mean of the image
as it stands at its position, so a program first runs the chain up to that position over the image to sum
it, then runs the whole chain.

The arithmetic is `augment.py`'s, operation for operation; that code stays the reference and the CPU's
path, and tests/data/test_colour_kernel.py holds the two together (Triton's interpreter runs the kernel on
a CPU). Where the kernel cannot run (no Triton, a device other than CUDA) the caller uses that code instead
(`kernel_runs_on`). The registered operation has a meta implementation, so torch.compile, CUDA graphs and
the launch count on the `meta` device see one operation.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

# A row of `params` per image: jitter applied (0/1), brightness delta, contrast factor, saturation factor,
# hue shift in turns, grayscale applied (0/1).
PARAMS = ("jitter", "brightness", "contrast", "saturation", "hue", "grayscale")
BLOCK = 1024  # pixels per tile: a 32-px image in one tile, a 224-px one in 49


@torch.library.custom_op("byol::colour_jitter", mutates_args=())
def colour_jitter(x: torch.Tensor, params: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """`x` (B, C, H, W) float32 in [0, 1], C = 1 or 3; `params` (B, 6) as PARAMS; `order` (B, 4) int64, the
    jitter operation (0 brightness, 1 contrast, 2 saturation, 3 hue) at each position."""
    return run_kernel(x, params, order)


@colour_jitter.register_fake
def _(x: torch.Tensor, params: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape)  # contiguous, as the kernel writes it


class KernelUnavailable(RuntimeError):
    """The kernel could not be built here (a Triton that cannot compile it): callers use the torch code."""


# Why the kernel could not be built in this process, once its first launch failed; None while it works.
unavailable: str | None = None
built = False  # a launch succeeded: a later failure is not the build's


def kernel_runs_on(x: torch.Tensor) -> bool:
    """On CUDA where Triton is installed and builds the kernel; on the CPU only under Triton's interpreter
    (TRITON_INTERPRET=1)."""
    if unavailable or (x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1"):
        return False
    return _triton() is not None


@functools.cache
def _triton():
    try:
        import triton
    except ImportError:  # CPU-only and macOS wheels of torch come without it
        return None
    return triton


def run_kernel(x: torch.Tensor, params: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    global built, unavailable
    x = x.contiguous()
    out = torch.empty_like(x)
    batch, channels, height, width = x.shape
    from byol.data.colour_kernel_source import colour_program

    # Triton launches on the current device: make it x's (`--device cuda:1` in one process)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        try:
            colour_program[(batch,)](
                x, out, params.float().contiguous(), order.to(torch.int32).contiguous(), height * width, channels, BLOCK
            )
        except Exception as error:  # Triton's compile errors have many types; a CUDA error is the device's
            if isinstance(error, getattr(torch, "AcceleratorError", ())) or built:
                raise
            lines = str(error).strip().splitlines() or [""]
            unavailable = f"{type(error).__name__}: {lines[-1][:200]}"  # Triton's reason is its last line
            raise KernelUnavailable(unavailable) from error
    built = True
    return out
