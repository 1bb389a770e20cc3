import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from byol.data.datasets import FASHION_MNIST_SYSTEM_DIR
from byol.runtime.checkpoint import load_checkpoint
from byol.training.config import resolve
from byol.training.run import train
from tests.conftest import TINY_RUN, command_line


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "byol", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_smoke_preset_end_to_end(tmp_path):
    out = tmp_path / "smoke"
    result = run_cli("train", "--preset", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl", "backbone.safetensors"):
        assert (out / name).is_file(), name
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lines = [r for r in lines if "loss" in r]  # the epoch-0 kNN line has no loss
    assert lines and {"step", "epoch", "loss", "lr", "tau", "images_per_s", "embedding_std", "effective_rank"} <= set(
        lines[0]
    )
    assert [r["step"] for r in lines] == sorted({r["step"] for r in lines})
    assert lines[-1]["loss"] < lines[0]["loss"]  # it learns something even in 16 steps
    weights = load_file(str(out / "backbone.safetensors"))
    assert "conv1.weight" in weights and not any(k.startswith(("target", "predictor")) for k in weights)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == lines[-1]["step"]


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, fashion_dir):
    straight = resolve(overrides={**TINY_RUN, "data": str(fashion_dir), "out": str(tmp_path / "straight")})
    train(straight, quiet=True)

    interrupted = resolve(
        overrides={**TINY_RUN, "data": str(fashion_dir), "out": str(tmp_path / "resumed"), "stop_after_steps": 3}
    )
    summary = train(interrupted, quiet=True)
    assert summary["steps"] == 3 and not summary["finished"]
    assert not (tmp_path / "resumed" / "backbone.safetensors").exists()
    # resume in a fresh process state: a different global seed must not matter
    torch.manual_seed(1234)
    resumed = resolve(config_file=str(tmp_path / "resumed" / "config.yaml"), overrides={"resume": True})
    assert train(resumed, quiet=True)["finished"]

    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    wa = load_file(str(tmp_path / "straight" / "backbone.safetensors"))
    wb = load_file(str(tmp_path / "resumed" / "backbone.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(9))  # step 0: the kNN monitor before training
    losses_a = [json.loads(x).get("loss") for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    losses_b = [json.loads(x).get("loss") for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert losses_a == losses_b


def test_fp16_keeps_its_gradient_scaler_in_the_checkpoint_and_resumes_to_the_uninterrupted_run(
    tmp_path, fashion_dir, monkeypatch
):
    """fp16 (what `auto` picks on a GPU without native bf16) trains with a GradScaler, whose state is the run's.
    Whether a step overflows, and so what the scale does, depends on the CPU's fp16 kernels (one with native
    fp16 arithmetic overflowed in the last step and reset the growth tracker to 0): the test holds the
    resumed scaler to the uninterrupted one's and to the saved one's, never to a particular trajectory."""
    base = {
        **TINY_RUN,
        "precision": "fp16",
        "data": str(fashion_dir),
        "knn_every": 0,
        "online_probe": False,
        "epochs": 1,
        "checkpoint_every": 2,
    }  # 4 steps: fp16 is emulated, so slow, on a CPU
    train(resolve(overrides={**base, "out": str(tmp_path / "straight")}), quiet=True)
    train(resolve(overrides={**base, "out": str(tmp_path / "resumed"), "stop_after_steps": 2}), quiet=True)
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["scaler"]
    # Two steps never leave a fresh scaler's state on any CPU: a finite step counts towards growth, an overflow
    # halves the scale, and the scale grows only after growth_interval (2000) finite steps.
    assert saved and saved != torch.amp.GradScaler("cpu").state_dict()
    loaded, load = [], torch.amp.GradScaler.load_state_dict
    monkeypatch.setattr(
        torch.amp.GradScaler, "load_state_dict", lambda self, s: loaded.append(dict(s)) or load(self, s)
    )
    assert train(
        resolve(config_file=str(tmp_path / "resumed" / "config.yaml"), overrides={"resume": True}), quiet=True
    )["finished"]
    assert loaded == [saved]  # the resumed run continued from the saved scaler, not from a fresh one
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("straight", "resumed"))
    assert a["scaler"] == b["scaler"]  # scale and growth tracker: the uninterrupted run's, whatever they are
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    losses = [
        json.loads(line).get("loss") for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(math.isfinite(loss) for loss in losses if loss is not None)


def test_existing_run_is_not_overwritten_without_resume(tmp_path, fashion_dir):
    args = [
        "train",
        "--data",
        str(fashion_dir),
        "--out",
        str(tmp_path / "run"),
        "--subset",
        "64",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--width",
        "0.125",
        "--projector-hidden-dim",
        "32",
        "--predictor-hidden-dim",
        "32",
        "--quiet",
    ]
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "--resume" in again.stderr and "Traceback" not in again.stderr


def test_resume_refuses_a_stem_the_checkpoint_was_not_trained_with(tmp_path, fashion_dir):
    # the pooled and unpooled CIFAR stems have the same parameters: a load would succeed and silently
    # continue (or export) pooled weights as an unpooled network
    out = tmp_path / "run"
    first = resolve(
        overrides={**TINY_RUN, "epochs": 1, "stem": "cifar-pool", "data": str(fashion_dir), "out": str(out)}
    )
    train(first, quiet=True)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    options = {**TINY_RUN, "epochs": 1, "data": str(fashion_dir), "out": str(out), "stem": "cifar"}
    args = ["train", *command_line(options), "--resume", "--quiet"]
    refused = run_cli(*args)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "'cifar-pool' stem" in refused.stderr and "--stem cifar-pool" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written
    args[args.index("cifar")] = "cifar-pool"
    assert run_cli(*args).returncode == 0


def test_resume_without_checkpoint_starts_fresh(tmp_path, fashion_dir):
    cfg = resolve(
        overrides={**TINY_RUN, "epochs": 1, "data": str(fashion_dir), "out": str(tmp_path / "r"), "resume": True}
    )
    assert train(cfg, quiet=True)["finished"]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--dataset", "fashion-mnist", "--data", "/nonexistent/fm"], "/nonexistent/fm"),
        (["--dataset", "folder", "--data", "/nonexistent/imgs"], "/nonexistent/imgs"),
        (["--batch-size", "1"], "--batch-size"),
        (["--config", "/nonexistent/c.yaml"], "/nonexistent/c.yaml"),
        (["--method", "moco"], "--method"),
        (["--aug-remove", "colour"], "--aug-remove"),
        (["--norm", "layer"], "--norm"),
        (["--stem", "big"], "--stem"),
        (["--method", "simclr", "--no-predictor"], "--method"),
        (["--method", "swav", "--no-predictor"], "--method swav"),
        (["--method", "mocov2", "--local-crops", "2"], "--method mocov2 takes no local crops"),
        (["--method", "mocov2", "--queue-size", "1000"], "--queue-size 1000"),
        (["--local-crop-scale", "0.5", "0.2"], "--local-crop-scale"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, expected):
    result = run_cli("train", "--out", str(tmp_path / "x"), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and expected in result.stderr
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_folder_dataset_trains(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).numpy()).save(
                root / label / f"{i}.png"
            )
    (root / "cats" / "broken.jpg").write_bytes(b"not an image")
    cfg = resolve(
        overrides={
            **TINY_RUN,
            "dataset": "folder",
            "data": str(root),
            "image_size": 32,
            "epochs": 1,
            "subset": None,
            "workers": 0,
            "out": str(tmp_path / "run"),
        }
    )
    summary = train(cfg, quiet=True)
    assert summary["finished"] and summary["steps"] == 1
    assert summary["bad_images"] in (0, 1)  # counted when the broken file lands in the full batch


def test_a_run_inside_its_warm_up_is_warned_about_and_records_the_lr_it_reached(tmp_path, fashion_dir):
    out = tmp_path / "short"
    small = {"data": str(fashion_dir), "subset": 64, "batch_size": 32, "knn_every": 0}
    result = run_cli(
        "train", "--preset", "smoke", *command_line({**small, "epochs": 1, "warmup_epochs": 10, "out": out})
    )
    assert result.returncode == 0, result.stderr
    assert "--warmup-epochs 10 is as long as the run (--epochs 1)" in result.stderr
    resolved = yaml.safe_load((out / "config.yaml").read_text())["resolved"]
    assert resolved["lr_reached"] == pytest.approx(resolved["peak_lr"] * 2 / 20)  # step 2 of a 20-step warm-up
    normal = run_cli("train", "--preset", "smoke", *command_line({**small, "epochs": 2, "out": tmp_path / "normal"}))
    assert normal.returncode == 0 and "warmup" not in normal.stderr


def test_python_dash_m_and_version():
    result = run_cli("--version")
    assert result.returncode == 0 and "byol" in result.stdout


@pytest.mark.parametrize("method", ["mocov2", "swav", "dino", "barlowtwins", "vicreg"])
def test_every_method_trains_from_the_cli_with_its_own_recipe(tmp_path, fashion_dir, method):
    out = tmp_path / method
    result = run_cli(
        "train",
        "--preset",
        "smoke",
        "--method",
        method,
        "--data",
        str(fashion_dir),
        "--subset",
        "128",
        "--epochs",
        "1",
        "--knn-every",
        "0",
        "--no-tensorboard",
        "--out",
        str(out),
        *(["--queue-size", "128"] if method == "mocov2" else []),
        *(["--local-crops", "2", "--prototypes", "256"] if method in ("swav", "dino") else []),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = (out / "config.yaml").read_text()
    assert f"method: {method}" in saved and (out / "backbone.safetensors").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert ("tau" in records[-1]) == (method in ("mocov2", "dino"))  # τ is logged for methods with a target


@pytest.mark.parametrize(
    "method, extra",
    [
        ("mocov2", {"queue_size": 64}),
        ("dino", {"local_crops": 2, "prototypes": 64}),
        ("swav", {"local_crops": 2, "prototypes": 64, "queue_size": 64, "queue_start_epoch": 0.0}),
    ],
)
def test_methods_with_state_resume_to_the_uninterrupted_run(tmp_path, fashion_dir, method, extra):
    """MoCo's queue, DINO's centre and SwAV's queue are in the checkpoint (SwAV's is full and in use by the
    stop at step 3: 64 = 2 batches of 32)."""
    base = {**TINY_RUN, "method": method, **extra, "data": str(fashion_dir), "knn_every": 0, "online_probe": False}
    straight = resolve(overrides={**base, "out": str(tmp_path / "straight")})
    train(straight, quiet=True)
    train(resolve(overrides={**base, "out": str(tmp_path / "resumed"), "stop_after_steps": 3}), quiet=True)
    torch.manual_seed(99)
    assert train(
        resolve(config_file=str(tmp_path / "resumed" / "config.yaml"), overrides={"resume": True}), quiet=True
    )["finished"]
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("straight", "resumed"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert ("queue" in a["model"]) == (method != "dino") and ("center" in a["model"]) == (method == "dino")
    if method == "swav":
        assert a["model"]["queue_filled"].tolist() == [256] and len(a["model"]["queue"]) == 1  # 8 steps of 32


def cli_options(values: dict) -> list[str]:
    return [word for name, value in values.items() for word in (f"--{name.replace('_', '-')}", str(value))]


def test_out_and_resume_alone_continue_the_run_as_it_was_configured(tmp_path, fashion_dir):
    base = {**TINY_RUN, "data": str(fashion_dir)}
    train(resolve(overrides={**base, "out": str(tmp_path / "straight")}), quiet=True)
    out = tmp_path / "resumed"
    stopped = run_cli("train", *cli_options({**base, "out": out, "stop_after_steps": 3}), "--quiet")
    assert stopped.returncode == 0, stopped.stderr
    # nothing but the folder: the defaults (another width, batch, LR, ...) must not replace the run's own
    assert run_cli("train", "--out", str(out), "--resume", "--quiet").returncode == 0
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("straight", "resumed"))
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_resume_that_changes_what_the_run_learns_is_refused_in_one_line(tmp_path, fashion_dir):
    out = tmp_path / "run"
    train(resolve(overrides={**TINY_RUN, "data": str(fashion_dir), "out": str(out), "stop_after_steps": 3}), quiet=True)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    refused = run_cli("train", "--out", str(out), "--resume", "--lr", "0.1", "--quiet")
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "--lr 0.4 (now 0.1)" in refused.stderr and "Traceback" not in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
