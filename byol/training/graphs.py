"""`--cuda-graphs`: the step's augmentation, forward and backward captured once as a CUDA graph, then replayed.

Why: on an H100 a ResNet-18 step at 32 px launches about 2,350 kernels, and the GPU was busy for only about
half of the step (docs/performance.md): the host cannot launch small kernels as fast as the GPU runs them.
A replayed graph launches all of them at once.

What is captured: everything `step.training_step` does up to the gradients (augmentation, the learner's
forward and loss under autocast, backward). What stays eager: gradient surgery, the optimizer step and the
target EMA (`step.apply_gradients`). LR and τ change every step, and a graph would freeze the Python
numbers they are passed as; those are a few multi-tensor kernels.

The rules a replayed step keeps, so it computes what the eager step computes (tests/test_cuda.py checks it):
- nothing in the captured part waits for the device (the step is sync-free on CUDA: augment._apply_to);
- one set of shapes: each batch is copied into the tensor the graph reads;
- the captured backward owns the `.grad` tensors and overwrites them on each replay; a learner that sets
  one to None to skip a parameter (DINO's frozen last layer) gets it back before the next replay;
- random numbers: `torch.manual_seed` before a replay gives the graph's kernels the seed and offsets the eager
  step would use, so a graphed run draws the eager run's augmentations;
- autocast runs without its cache of cast weights, which must not outlive a capture;
- Python state a learner's forward reads (DINO's teacher temperature) is its `graph_key()`: when the key
  changes, the step is captured again. A learner whose forward changes Python state that a replay would
  not (SwAV's queue counter) says why in `graph_problem`, and `byol train` refuses it.
"""

from __future__ import annotations

import torch

from byol.runtime.distributed import unwrap
from byol.training.step import apply_gradients, forward_backward, training_step


def graph_key(learner: torch.nn.Module):
    """What the learner's forward reads besides tensors; a new value needs a new capture."""
    inner = unwrap(learner)
    return inner.graph_key() if hasattr(inner, "graph_key") else None


class GraphedStep:
    """`loss, outputs = step(images, tau)`, the same contract as `training_step`, on one CUDA device.

    The first `warmup_steps` calls run the step eagerly on a side stream: cuDNN's algorithm search, optimizer
    state, lazy initialisation and a compiled learner's compilation all happen there, as capture requires.
    The next call captures, and every call from then on replays, until the learner's graph key or the batch
    shape changes: then one eager step, and a new capture. `loss` and `outputs` are the graph's own tensors:
    read them before the next call.
    """

    WARMUP_STEPS = 3  # torch's documentation warms up with three; DDP would need eleven

    def __init__(
        self,
        learner: torch.nn.Module,
        augment: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        memory_format: torch.memory_format,
        amp_dtype: torch.dtype | None,
        warmup_steps: int = WARMUP_STEPS,
    ):
        self.learner, self.augment, self.optimizer, self.scaler = learner, augment, optimizer, scaler
        self.memory_format, self.amp_dtype = memory_format, amp_dtype
        self.warmup_left = warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captures = 0
        self._key = self._images = self._loss = self._outputs = None
        self._grads: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def __call__(self, images: torch.Tensor, tau: float):
        if self.warmup_left:
            self.warmup_left -= 1
            # autocast as in the capture: torch.compile guards on its state, and a compiled learner must not
            # recompile inside the capture
            return self._on_side_stream(
                lambda: training_step(
                    self.learner,
                    self.augment,
                    self.optimizer,
                    self.scaler,
                    images,
                    tau,
                    self.memory_format,
                    self.amp_dtype,
                    autocast_cache=False,
                )
            )
        key = graph_key(self.learner)
        if self.graph is not None and (key != self._key or images.shape != self._images.shape):
            # A new capture gets an eager step of its own first: a compiled learner recompiles for the new key
            # there (DINO's teacher temperature is one), never inside the capture.
            self._release()
            self.warmup_left = 1
            return self(images, tau)
        if self.graph is None:
            self._capture(images, key)
        self._images.copy_(images, non_blocking=True)
        for param, grad in self._grads:
            param.grad = grad
        self.graph.replay()
        apply_gradients(self.learner, self.optimizer, self.scaler, tau)
        return self._loss, self._outputs

    @staticmethod
    def _on_side_stream(fn):
        side, main = torch.cuda.Stream(), torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            result = fn()
        main.wait_stream(side)
        return result

    def _release(self) -> None:
        """The graph and its memory go back (before a new capture takes its own)."""
        self.graph = self._loss = self._outputs = None
        self._grads = []

    def _capture(self, images: torch.Tensor, key) -> None:
        self._release()
        self._images = torch.empty_like(images)
        # The capture's backward allocates the gradients in the graph's memory; replays write into them.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the pin-memory thread of a folder run may allocate pinned memory meanwhile, which the
        # default ("global") would count as an error in this capture; torch's own cudagraph trees do the same.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._loss, self._outputs = forward_backward(
                self.learner,
                self.augment,
                self.scaler,
                self._images,
                self.memory_format,
                self.amp_dtype,
                autocast_cache=False,
            )
        self.graph, self._key = graph, key
        self._grads = [(param, param.grad) for param in self.learner.parameters() if param.grad is not None]
        self.captures += 1
