"""Kills, pre-emption, Ctrl-C and divergence: a run loses nothing and resumes bit for bit."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from byol.runtime.checkpoint import load_checkpoint
from byol.runtime.errors import UserError
from byol.training import run as train_module
from byol.training import run_dir as run_dir_module
from byol.training import trainer as trainer_module
from byol.training.config import resolve
from tests.conftest import TINY_RUN, command_line

ROOT = Path(__file__).resolve().parents[2]
# 4 epochs of 4 steps, a checkpoint every 3 steps and at each epoch end.
ARGS = command_line({**TINY_RUN, "epochs": 4, "tensorboard": False})

# Test-only fault injection, loaded by the interpreter at start-up through PYTHONPATH: at the start of
# step BYOL_TEST_SIGNAL_STEP the process sends itself BYOL_TEST_SIGNAL.
HOOK = """
import os
if os.environ.get("BYOL_TEST_SIGNAL"):
    import signal
    import byol.training.trainer

    at_step, number = int(os.environ["BYOL_TEST_SIGNAL_STEP"]), getattr(signal, os.environ["BYOL_TEST_SIGNAL"])
    real_step = byol.training.trainer.Trainer.step

    def step(self, images, labels, step):
        if step == at_step:
            os.kill(os.getpid(), number)
        return real_step(self, images, labels, step)

    byol.training.trainer.Trainer.step = step
"""


def byol_train(hook_dir: Path, data: Path, out: Path, *extra: str, signal_name: str = "", at_step: int = 0):
    env = {
        **os.environ,
        "PYTHONPATH": f"{hook_dir}{os.pathsep}{ROOT}",
        "BYOL_TEST_SIGNAL": signal_name,
        "BYOL_TEST_SIGNAL_STEP": str(at_step),
    }
    return subprocess.run(
        [sys.executable, "-m", "byol", "train", *ARGS, "--data", str(data), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    from tests.conftest import make_fashion_like

    root = tmp_path_factory.mktemp("faults")
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    data = make_fashion_like(root / "fashion")
    result = byol_train(hook, data, root / "straight")
    assert result.returncode == 0, result.stderr
    return hook, data, load_checkpoint(root / "straight" / "checkpoint.pt")


def assert_same_run(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == 16
    for part in ("model", "monitor"):
        for name, value in a[part].items() if part == "model" else a[part]["probe"].items():
            other = b[part][name] if part == "model" else b[part]["probe"][name]
            assert torch.equal(value, other), name
    momentum = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    assert all(torch.equal(m, s["momentum_buffer"]) for m, s in zip(momentum, b["optimizer"]["state"].values()))


def test_sigkill_at_five_random_steps_resumes_bit_identical(tmp_path, setting):
    hook, data, straight = setting
    out = tmp_path / "killed"
    kills = sorted(random.Random(7).sample(range(1, 16), 5))
    for at_step in kills:
        result = byol_train(hook, data, out, "--resume", signal_name="SIGKILL", at_step=at_step)
        assert result.returncode == -9, (at_step, result.stderr)
    final = byol_train(hook, data, out, "--resume")
    assert final.returncode == 0, final.stderr
    assert_same_run(load_checkpoint(out / "checkpoint.pt"), straight)
    steps = [line.split('"step": ')[1].split(",")[0] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps), key=int)  # each step logged once despite the repeats


def test_sigterm_and_ctrl_c_checkpoint_and_exit_cleanly_then_resume_bit_identical(tmp_path, setting):
    hook, data, straight = setting
    out = tmp_path / "preempted"
    first = byol_train(hook, data, out, signal_name="SIGTERM", at_step=4)
    assert first.returncode == 143, first.stderr
    assert "Traceback" not in first.stderr
    assert f"SIGTERM: checkpoint written at step 5/16; continue with: byol train --out {out} --resume" in first.stderr
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 5  # the step in flight finished, then a checkpoint

    second = byol_train(hook, data, out, "--resume", signal_name="SIGINT", at_step=9)
    assert second.returncode == 130 and "Traceback" not in second.stderr, second.stderr
    assert "SIGINT: checkpoint written at step 10/16" in second.stderr

    final = byol_train(hook, data, out, "--resume")
    assert final.returncode == 0, final.stderr
    assert_same_run(load_checkpoint(out / "checkpoint.pt"), straight)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, fashion_dir, monkeypatch):
    real_step, calls = trainer_module.training_step, [0]

    def diverging_step(*args, **kwargs):
        loss, outputs = real_step(*args, **kwargs)
        calls[0] += 1
        if calls[0] >= 5:  # from step 5 on the weights are NaN (as after an exploding update)
            learner = args[0]
            with torch.no_grad():
                for p in learner.parameters():
                    p.fill_(float("nan"))
            loss = loss * float("nan")
        return loss, outputs

    monkeypatch.setattr(trainer_module, "training_step", diverging_step)
    cfg = resolve(
        overrides={
            **TINY_RUN,
            "data": str(fashion_dir),
            "out": str(tmp_path / "run"),
            "log_every": 4,
            "checkpoint_every": 1,
            "knn_every": 0,
        }
    )
    with pytest.raises(UserError) as error:
        train_module.train(cfg, quiet=True)
    message = str(error.value)
    assert "step 5" in message and "--lr" in message and "fp32" in message and "last good checkpoint" in message
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_full_disk_while_logging_stops_with_one_line_and_a_torn_line_does_not_block_the_resume(
    tmp_path, fashion_dir, monkeypatch
):
    import builtins
    import errno
    import json

    real_open = builtins.open

    class FillsUp:
        """metrics.jsonl whose disk fills on the 6th line, after half of it is written."""

        def __init__(self, file):
            self.file, self.lines = file, 0

        def write(self, text):
            self.lines += 1
            if self.lines == 6:
                self.file.write(text[: len(text) // 2])
                self.file.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(text)

        def __getattr__(self, name):
            return getattr(self.file, name)

    def fake_open(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        return FillsUp(handle) if str(path).endswith("metrics.jsonl") else handle

    out = tmp_path / "run"
    cfg = resolve(
        overrides={**TINY_RUN, "data": str(fashion_dir), "out": str(out), "checkpoint_every": 2, "knn_every": 0}
    )
    monkeypatch.setattr(run_dir_module, "open", fake_open, raising=False)
    with pytest.raises(UserError) as error:
        train_module.train(cfg, quiet=True)
    assert "metrics.jsonl" in str(error.value) and "No space left on device" in str(error.value)
    assert "\n" not in str(error.value)
    with pytest.raises(json.JSONDecodeError):
        [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]  # the torn line is there
    checkpointed = load_checkpoint(out / "checkpoint.pt")["step"]

    monkeypatch.undo()
    resumed = resolve(config_file=str(out / "config.yaml"), overrides={"resume": True})
    assert train_module.train(resumed, quiet=True)["finished"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert checkpointed < 8 and steps == list(range(1, 9))
