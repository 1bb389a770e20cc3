"""`--cuda-graphs` (byol/training/graphs.py): refused in one line where it cannot work (CPU, torchrun, SwAV's queue);
on a GPU (`-m cuda`) a graphed run computes what the eager run computes, draws the same augmentations,
captures again when DINO's teacher temperature changes, and never waits for the device while it replays."""

import contextlib

import pytest
import torch
from torch import nn

from byol import DINO, SwAV
from byol.bench import bench
from byol.data.augment import BYOLAugment
from byol.data.datasets import BatchStream
from byol.runtime.device import Runtime
from byol.runtime.distributed import Context
from byol.runtime.errors import UserError
from byol.training.config import resolve
from byol.training.graphs import GraphedStep
from byol.training.trainer import Schedule, Trainer
from tests.conftest import SMALL_STEP, make_trainer, toy_dataset

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def tiny_backbone():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_cuda_graphs_on_the_cpu_are_refused_naming_the_option():
    with pytest.raises(UserError, match="--cuda-graphs: CUDA graphs need a CUDA device, not --device cpu"):
        resolve(overrides={"cuda_graphs": True, "device": "cpu"})
    # --device auto that lands on the CPU: the trainer knows, and says so
    cfg = resolve(overrides={**SMALL_STEP, "cuda_graphs": True})
    runtime = Runtime.resolve(CPU, "fp32", None)
    with pytest.raises(UserError, match="--cuda-graphs: CUDA graphs need a CUDA device; this run is on cpu"):
        Trainer(cfg, toy_dataset(), 28, runtime, Context(), Schedule.for_run(cfg, 4))
    with pytest.raises(UserError, match="--cuda-graphs: CUDA graphs need a CUDA device; this bench runs on cpu"):
        bench(width=0.125, steps=1, batch_size=4, device="cpu", cuda_graphs=True)


def test_the_cli_refuses_cuda_graphs_on_the_cpu_in_one_line(capsys):
    from byol.cli import main

    assert main(["train", "--preset", "smoke", "--device", "cpu", "--cuda-graphs"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--cuda-graphs" in error


def test_a_learner_says_when_a_replayed_forward_would_go_wrong():
    assert SwAV(tiny_backbone(), prototypes=10).graph_problem is None  # no queue: only tensors change
    problem = SwAV(tiny_backbone(), prototypes=10, queue_size=64).graph_problem
    assert "--queue-size" in problem
    dino = DINO(
        tiny_backbone(),
        prototypes=10,
        teacher_temperature_start=0.04,
        teacher_temperature=0.07,
        teacher_temperature_epochs=3,
    )
    keys = []
    for epoch in (0.0, 0.5, 1.0, 2.0, 3.5, 7.0):
        dino.set_progress(0, epoch)
        keys.append(dino.graph_key())
    # the teacher temperature changes at epoch boundaries during its warm-up, then stays: three captures
    assert keys[0] == keys[1] and len(set(keys)) == 3 and keys[-1] == keys[-2] == pytest.approx(0.07)


class FakeCuda:
    """torch.cuda's graph and stream calls, recorded instead of run: the capture runs its body once, eagerly
    (on the CPU), and a replay runs nothing. Enough to check GraphedStep's bookkeeping without a GPU."""

    def __init__(self, monkeypatch):
        self.events = []
        events = self.events

        class Graph:
            def replay(self):
                events.append("replay")

        class Stream:
            def wait_stream(self, other):
                pass

        @contextlib.contextmanager
        def graph(cuda_graph, capture_error_mode="global"):
            events.append("capture")
            yield

        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())


def test_warm_up_then_one_capture_then_replays_and_a_new_capture_per_teacher_temperature(monkeypatch):
    fake = FakeCuda(monkeypatch)
    learner = DINO(
        tiny_backbone(),
        bottleneck_dim=8,
        projector_hidden_dim=16,
        prototypes=10,
        teacher_temperature_start=0.04,
        teacher_temperature=0.07,
        teacher_temperature_epochs=2,
        freeze_head_epochs=1.0,
    )
    augment = BYOLAugment(16, (0.5,) * 3, (0.25,) * 3)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.1)
    step = GraphedStep(
        learner, augment, optimizer, torch.amp.GradScaler("cpu", enabled=False), torch.contiguous_format, None
    )
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    last_layer = [p for p in learner.online_projector.last_layer.parameters() if p.requires_grad]
    for index, epoch in enumerate((0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 1.5)):
        learner.set_progress(index, epoch)
        loss, _ = step(images, 0.99)
        assert torch.isfinite(loss)
        if index < GraphedStep.WARMUP_STEPS:
            assert fake.events == []  # eager warm-up
        if epoch < 1:  # DINO drops the frozen last layer's gradient; the graph's tensor comes back before a replay
            assert all(param.grad is None for param in last_layer)
    # at epoch 1 the teacher's temperature changes: one eager step (a compiled learner recompiles there, not
    # inside a capture), then a new capture
    assert fake.events == ["capture", "replay", "replay", "capture", "replay"]
    assert step.captures == 2 and all(param.grad is not None for param in last_layer)
    assert step._grads and all(param.grad is grad for param, grad in step._grads)


# ------------------------------------------------------------------------------------------------- on a GPU


def run(trainer: Trainer, stream: BatchStream, epochs: int) -> list[float]:
    losses, step = [], 0
    for epoch in range(epochs):
        for images, labels in stream.epoch(seed=0, epoch=epoch):
            losses.append(trainer.step(images, labels, step).loss.item())
            step += 1
    return losses


@pytest.mark.cuda
def test_a_graphed_run_computes_what_the_eager_run_computes():
    """fp32 without TF32, 12 steps (3 eager, 9 replayed): the losses and weights of the graphed run are as close
    to an eager run's as a second eager run's are (cuDNN's backward may sum in a different order each run).
    Different augmentations (a wrong random stream) would move the losses by percents."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        results = []
        for graphs in (False, False, True):
            trainer, stream = make_trainer(CUDA, "fp32", channels=3, cuda_graphs=graphs)
            losses = run(trainer, stream, 3)
            results.append((losses, {k: v.double().cpu() for k, v in trainer.learner.state_dict().items()}, trainer))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    (eager_losses, eager, _), (again_losses, again, _), (graph_losses, graphed, trainer) = results
    assert isinstance(trainer.run_step, GraphedStep) and trainer.run_step.captures == 1
    # Two eager runs may agree to the bit while the graph's kernels sum in another order (fp32 round-off, ~1e-7
    # of a value per reduction, grown over 12 steps): the bound never falls below 1e-3 of the values, which a
    # wrong random stream (losses off by percents) still exceeds by far. As in tests/test_cuda.py.
    for e, a, g in zip(eager_losses, again_losses, graph_losses, strict=True):
        assert abs(g - e) <= max(4 * abs(a - e), 1e-3 * abs(e)) + 1e-6, (eager_losses, graph_losses)
    for name, value in eager.items():
        scale = value.abs().max().item() or 1.0
        spread, error = (again[name] - value).abs().max(), (graphed[name] - value).abs().max()
        assert error <= max(4 * spread, 1e-3 * scale) + 1e-6, (name, float(error), float(spread))


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_replayed_steps_never_wait_for_the_device_and_stay_finite(precision):
    trainer, stream = make_trainer(CUDA, precision, channels=3, cuda_graphs=True)
    batches = [batch for epoch in range(2) for batch in stream.epoch(seed=0, epoch=epoch)]
    for step in range(GraphedStep.WARMUP_STEPS + 1):  # eager warm-up, then the capture and its first replay
        trainer.step(*batches[step], step)
    torch.cuda.synchronize()
    # fp16's scaler reads one flag per step (its optimizer step, not the graph): only bf16 is checked sync-free
    torch.cuda.set_sync_debug_mode("error" if precision == "bf16" else "default")
    try:
        losses = [
            trainer.step(images, labels, step).loss.clone()
            for step, (images, labels) in enumerate(
                batches[GraphedStep.WARMUP_STEPS + 1 :], GraphedStep.WARMUP_STEPS + 1
            )
        ]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all() and trainer.run_step.captures == 1
    assert all(torch.isfinite(p).all() for p in trainer.learner.parameters())
    assert len({round(loss.item(), 6) for loss in losses}) > 1  # the replays see new batches and augmentations


@pytest.mark.cuda
def test_dino_is_captured_again_when_its_teacher_temperature_changes():
    overrides = dict(
        method="dino",
        bottleneck_dim=16,
        projector_hidden_dim=32,
        prototypes=40,
        teacher_temperature_start=0.04,
        teacher_temperature=0.07,
        teacher_temperature_epochs=3,
        freeze_head_epochs=1.0,
    )
    losses = {}
    for graphs in (False, True):
        trainer, stream = make_trainer(CUDA, "bf16", channels=3, cuda_graphs=graphs, **overrides)
        losses[graphs] = run(trainer, stream, 3)
    # 4 steps an epoch: the first capture at step 3 (epoch 0), then one at each new temperature (epochs 1 and 2)
    assert trainer.run_step.captures == 3
    for eager, graphed in zip(losses[False], losses[True], strict=True):
        assert graphed == pytest.approx(eager, rel=0.05, abs=0.05)  # bf16: the same run, rounded differently
    # frozen for epoch 0 (its gradient dropped), trained after
    assert all(
        param.grad is not None
        for param in trainer.learner.online_projector.last_layer.parameters()
        if param.requires_grad
    )


@pytest.mark.cuda
def test_bench_replays_the_step():
    result = bench(
        width=0.125, image_size=32, batch_size=16, steps=3, device="cuda", precision="bf16", cuda_graphs=True
    )
    assert result["cuda_graphs"] and result["images_per_s"] > 0


def test_cuda_graphs_under_torchrun_are_refused_naming_why():
    from types import SimpleNamespace

    trainer = SimpleNamespace(
        runtime=SimpleNamespace(device=torch.device("cuda")),
        context=SimpleNamespace(world_size=2),
        learner=SimpleNamespace(graph_problem=None),
    )
    assert "DDP's all-reduce" in Trainer.cuda_graphs_problem(trainer)
    trainer.context.world_size = 1
    assert Trainer.cuda_graphs_problem(trainer) is None
