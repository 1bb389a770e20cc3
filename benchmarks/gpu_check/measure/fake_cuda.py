"""A CPU stand-in for torch.cuda's graph and stream API, for dry runs of the graphs and compile steps
(the idea of tests/training/test_graphs.py's FakeCuda): a capture runs its body once, eagerly, on the CPU; a replay
runs nothing; streams are no-ops. Enough to run byol.training.graphs.GraphedStep's bookkeeping without a GPU; every
figure it gives is meaningless."""

from __future__ import annotations

import contextlib

import torch

EVENTS: list[str] = []


class _Graph:
    def replay(self) -> None:
        EVENTS.append("replay")


class _Stream:
    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other) -> None:
        pass


@contextlib.contextmanager
def _graph(cuda_graph, pool=None, stream=None, capture_error_mode="global"):
    EVENTS.append("capture")
    yield


def install() -> list[str]:
    """Replace torch.cuda's graph and stream calls in this process; returns the list of events."""
    torch.cuda.CUDAGraph = _Graph
    torch.cuda.graph = _graph
    torch.cuda.Stream = _Stream
    torch.cuda.current_stream = lambda device=None: _Stream()
    torch.cuda.stream = lambda stream: contextlib.nullcontext()
    return EVENTS
