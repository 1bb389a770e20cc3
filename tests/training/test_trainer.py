"""The Trainer: what a checkpoint holds restores every part exactly, restore comes before the first
step, the schedule is the config's, and a diverged state is never checkpointed."""

import dataclasses

import pytest
import torch

from byol.data.datasets import ImageDataset
from byol.runtime.checkpoint import TrainingState
from byol.runtime.device import Runtime
from byol.runtime.distributed import Context
from byol.runtime.errors import UserError
from byol.training.config import resolve
from byol.training.trainer import Schedule, Trainer
from tests.conftest import TINY_RUN

TINY = {**TINY_RUN, "subset": None, "batch_size": 8, "knn_every": 0}


def dataset() -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 16, 16), dtype=torch.uint8, generator=generator)
    return ImageDataset(
        "toy",
        1,
        16,
        (0.5,),
        (0.25,),
        images=images,
        labels=torch.randint(0, 4, (32,), generator=generator),
        classes=list("abcd"),
    )


def trainer(seed: int = 0, **overrides) -> Trainer:
    cfg = resolve(overrides={**TINY, "seed": seed, **overrides})
    torch.manual_seed(cfg.seed)
    schedule = Schedule.for_run(cfg, steps_per_epoch=4)
    return Trainer(cfg, dataset(), 16, Runtime.resolve(torch.device("cpu"), "fp32", None), Context(), schedule)


def batch(step: int):
    data = dataset()
    index = torch.arange(8) + 8 * (step % 4)
    return data.images[index], data.labels[index]


def test_a_restored_trainer_continues_exactly_like_the_original(tmp_path):
    original = trainer()
    for step in range(2):
        original.step(*batch(step), step)
    original.state_dict(2).save(tmp_path / "checkpoint.pt")  # through the file, as a resume reads it
    saved = TrainingState.load(tmp_path / "checkpoint.pt")
    restored = trainer(seed=1)  # different initial weights: everything must come from the checkpoint
    restored.cfg = original.cfg
    assert restored.restore(saved, "test") == 2
    for step in (2, 3):
        a, b = original.step(*batch(step), step), restored.step(*batch(step), step)
        assert torch.equal(a.loss, b.loss) and (a.lr, a.tau) == (b.lr, b.tau)
    for (name, x), y in zip(original.learner.state_dict().items(), restored.learner.state_dict().values()):
        assert torch.equal(x, y), name
    assert torch.equal(original.monitor.probe[1].weight, restored.monitor.probe[1].weight)


def test_restore_after_the_first_step_is_refused():
    t = trainer()
    saved = t.state_dict(0)
    t.step(*batch(0), 0)
    with pytest.raises(RuntimeError, match="before|after the first step"):
        t.restore(saved, "test")


def test_a_checkpoint_of_another_architecture_is_one_line():
    saved = trainer(width=0.25).state_dict(0)
    # its config says so: refused before any weight is touched, naming the option
    with pytest.raises(UserError, match=r"checkpoint.pt: trained with --width 0.25 \(now 0.125\)"):
        trainer().restore(saved, "checkpoint.pt")
    # a config that does not say so (written by other code): the weights' shapes still refuse it
    saved.config = {**saved.config, "width": TINY["width"]}
    with pytest.raises(UserError, match="checkpoint.pt: does not match this configuration"):
        trainer().restore(saved, "checkpoint.pt")


def test_schedule_follows_the_config():
    cfg = resolve(overrides={**TINY, "batch_size": 512, "lr": 0.3, "epochs": 10, "warmup_epochs": 2.5})
    schedule = Schedule.for_run(cfg, steps_per_epoch=100)
    assert (schedule.total_steps, schedule.warmup_steps) == (1000, 250)
    assert schedule.peak_lr == pytest.approx(0.6)  # 0.3 × 512 / 256
    assert schedule.lr(249) == pytest.approx(0.6) and schedule.lr(1000) == 0.0
    assert schedule.tau(0) == pytest.approx(0.97) and schedule.tau(1000) == 1.0
    assert schedule.lr_reached == schedule.peak_lr


def test_a_warm_up_as_long_as_the_run_never_reaches_the_peak():
    cfg = resolve(overrides={**TINY, "batch_size": 256, "lr": 0.4, "epochs": 1, "warmup_epochs": 10})
    schedule = Schedule.for_run(cfg, steps_per_epoch=8)
    assert schedule.lr_reached == pytest.approx(0.04)  # 8 of 80 warm-up steps: a tenth of the peak
    assert max(schedule.lr(step) for step in range(schedule.total_steps)) == schedule.lr_reached


def test_non_finite_weights_or_loss_are_never_checkpointed():
    t = trainer()
    t.check_finite(torch.tensor(1.0), 3, "runs/x")  # healthy: no error
    with pytest.raises(UserError, match="non-finite before step 3.*runs/x"):
        t.check_finite(torch.tensor(float("nan")), 3, "runs/x")
    with torch.no_grad():
        next(t.learner.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(UserError, match="non-finite"):
        t.check_finite(torch.tensor(1.0), 3, "runs/x")


def test_a_step_uses_the_schedule_and_draws_the_same_augmentations_for_the_same_step():
    a, b = trainer(), trainer()
    first, second = a.step(*batch(0), 0), b.step(*batch(0), 0)
    assert torch.equal(first.loss, second.loss)
    assert first.lr == a.schedule.lr(0) and a.optimizer.param_groups[0]["lr"] == first.lr
    assert dataclasses.asdict(a.info)["feature_dim"] == a.learner.feature_dim
    assert a.knn(1) is None  # the kNN monitor is off in this config


@pytest.mark.slow
def test_a_compiled_trainer_steps_like_the_eager_one():
    """--compile compiles the learner (DDP-wrapped first under torchrun) at the first step; same maths."""
    eager, compiled = trainer(), trainer(compile=True)
    for step in range(3):
        a, b = eager.step(*batch(step), step), compiled.step(*batch(step), step)
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
    # Compiled kernels sum in another order; three LARS steps at this LR carry that round-off to about 2e-4.
    for (name, x), y in zip(eager.learner.state_dict().items(), compiled.learner.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-3, atol=1e-3, msg=name)
