"""The colour kernel (byol/data/colour_kernel.py) computes what augment.py's colour functions compute: run by
Triton's interpreter on the CPU here, compiled on a GPU (`-m cuda`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from byol.data import colour_kernel
from byol.data.augment import colour_reference

ROOT = Path(__file__).resolve().parents[2]


def jitter_batch(batch: int, channels: int, size: int, device="cpu"):
    generator = torch.Generator().manual_seed(channels * size)
    x = torch.rand(batch, channels, size, size, generator=generator)
    x[0] = 0.5  # no chroma: hue is undefined, saturation has no limit
    x[1, :, :4] = 1.0  # clipped pixels: ties between channels
    params = torch.stack(
        [
            torch.rand(batch, generator=generator) < 0.8,
            torch.rand(batch, generator=generator) * 0.8 - 0.4,
            torch.rand(batch, generator=generator) * 0.8 + 0.6,
            torch.rand(batch, generator=generator) * 0.4 + 0.8,
            torch.rand(batch, generator=generator) * 0.2 - 0.1,
            torch.rand(batch, generator=generator) < 0.2,
        ],
        1,
    ).float()
    order = torch.rand(batch, 4, generator=generator).argsort(1)
    return x.to(device), params.to(device), order.to(device)


def worst_difference(channels: int, size: int) -> float:
    """Largest |kernel − reference| on a batch; run under the interpreter by the test below."""
    x, params, order = jitter_batch(12, channels, size)
    assert colour_kernel.kernel_runs_on(x)
    out = torch.ops.byol.colour_jitter(x, params, order)
    assert torch.equal(x, jitter_batch(12, channels, size)[0])  # the input is not written
    return (out - colour_reference(x, params, order)).abs().max().item()


# 40 px: 1600 pixels, two tiles of the kernel's 1024, so the contrast mean is summed across tiles
@pytest.mark.parametrize("channels, size", [(3, 32), (3, 40), (1, 40)])
def test_the_kernel_computes_the_reference_colour_chain(channels, size):
    # Triton decides whether to interpret when it is first imported: a process of its own
    pytest.importorskip("triton")
    script = f"from tests.data.test_colour_kernel import worst_difference; print(worst_difference({channels}, {size}))"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # the same float32 operations in the same order; only the contrast mean is summed in another order
    assert float(done.stdout.split()[-1]) <= 1e-5


def test_the_operation_has_a_meta_implementation_and_the_cpu_needs_the_interpreter(monkeypatch):
    x, params, order = jitter_batch(4, 3, 8, device="meta")
    assert torch.ops.byol.colour_jitter(x, params, order).shape == x.shape
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not colour_kernel.kernel_runs_on(torch.zeros(1))


@pytest.mark.cuda
@pytest.mark.parametrize("channels, size", [(3, 32), (3, 224), (1, 28)])
def test_the_compiled_kernel_computes_the_reference_on_a_gpu(channels, size):
    x, params, order = jitter_batch(64, channels, size, device="cuda")
    out = torch.ops.byol.colour_jitter(x, params, order)
    assert (out - colour_reference(x, params, order)).abs().max() <= 1e-5


def test_a_kernel_triton_cannot_build_leaves_the_torch_code_to_the_augmentation(monkeypatch, caplog):
    # a Triton older or newer than the one the kernel was written for must not stop a run: the first launch
    # fails, one warning, and the torch code computes the same chain from then on
    pytest.importorskip("triton")
    from byol.data import augment, colour_kernel_source

    def fails_to_build(grid):
        def launch(*args):
            raise ValueError("unsupported construct")

        return launch

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so that the CPU counts as a device the kernel runs on
    monkeypatch.setattr(
        colour_kernel_source, "colour_program", type("Fake", (), {"__getitem__": lambda s, g: fails_to_build(g)})()
    )
    monkeypatch.setattr(colour_kernel, "unavailable", None)
    monkeypatch.setattr(colour_kernel, "built", False)
    x, params, order = jitter_batch(6, 3, 16)
    assert colour_kernel.kernel_runs_on(x)
    with caplog.at_level("WARNING", logger="byol"):
        out = augment.colour_chain(x, params, order)
    assert torch.equal(out, colour_reference(x, params, order))
    assert "unsupported construct" in colour_kernel.unavailable and not colour_kernel.kernel_runs_on(x)
    assert sum("colour kernel cannot be built" in r.message for r in caplog.records) == 1
