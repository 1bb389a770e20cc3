"""`byol eval`, `embed`, `export` end to end on a small trained run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from byol.evaluation.export import read_encoder as load_encoder
from byol.training.config import resolve
from byol.training.run import train
from tests.conftest import TINY_RUN


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "byol", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.conftest import make_fashion_like

    root = tmp_path_factory.mktemp("run")
    data = make_fashion_like(root / "data", train=256, test=128)
    cfg = resolve(
        overrides={
            **TINY_RUN,
            "subset": None,
            "data": str(data),
            "out": str(root / "run"),
            "knn_every": 1,
            "knn_bank": 200,
            "knn_test": 100,
        }
    )
    train(cfg, quiet=True)
    return root / "run", data


def test_monitor_logs_knn_and_probe(trained_run):
    run, _ = trained_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in records if "knn_top1" in r]
    assert [r["epoch"] for r in knn] == [0.0, 1.0, 2.0]  # epoch 0: the untrained encoder
    assert all("probe_top1" in r for r in records if r["step"] > 0)
    assert (run / "tensorboard").is_dir()


def test_eval_json_has_every_field_and_beats_chance(trained_run):
    run, data = trained_run
    result = cli(
        "eval", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(data), "--json", "--linear-epochs", "10"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in (
        "knn_top1",
        "knn20_top1",
        "linear_top1",
        "linear_top5",
        "random_init_knn_top1",
        "random_init_linear_top1",
        "raw_pixel_knn_top1",
        "raw_pixel_linear_top1",
    ):
        assert 0 <= report[key] <= 100, key
    for prefix in ("", "random_init_", "raw_pixel_"):  # the few-label probe, beside every linear probe
        for fraction in ("1pct", "10pct"):
            key = f"{prefix}few_label_{fraction}_top1"
            each = report[f"{key}_per_subset"]
            assert len(each) == 3 and report[key] == pytest.approx(sum(each) / 3), key
            assert report[f"{key}_spread"] == pytest.approx(max(each) - min(each)), key
    assert "max - min" in report["few_label_probe"]
    # the synthetic classes are prototypes plus noise: raw pixels separate them almost perfectly
    assert report["raw_pixel_knn_top1"] > 90
    assert report["unreadable_train_images"] == report["unreadable_test_images"] == 0
    assert json.loads((run / "eval.json").read_text())["knn_top1"] == report["knn_top1"]
    for plot in ("loss.png", "knn.png", "embedding.png"):
        assert (run / plot).stat().st_size > 1000


def test_semi_protocol_saves_its_subsets(trained_run, tmp_path):
    run, data = trained_run
    result = cli(
        "eval",
        "--checkpoint",
        str(run / "backbone.safetensors"),
        "--data",
        str(data),
        "--protocol",
        "semi",
        "--no-baselines",
        "--semi-epochs",
        "1",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 0 <= report["semi_1pct_top1"] <= 100 and 0 <= report["semi_10pct_top1"] <= 100
    subsets = json.loads((tmp_path / "semi_subsets.json").read_text())["subsets"]
    assert len(subsets["10pct"]) >= 20 and len(subsets["1pct"]) == 10  # at least one per class


def test_the_few_label_probe_changes_no_other_figure(trained_run):
    from byol.evaluation.report import evaluate_encoder

    run, data = trained_run
    common = dict(protocols=["knn", "linear"], data=str(data), device="cpu", linear_epochs=3, quiet=True, workers=0)
    without = evaluate_encoder(str(run / "checkpoint.pt"), few_label_count=0, **common)
    with_probe = evaluate_encoder(str(run / "checkpoint.pt"), **common)
    assert "few_label_1pct_top1" not in without and "raw_pixel_few_label_10pct_top1" in with_probe
    for key, value in without.items():
        if key != "eval_wall_s" and not key.startswith("_"):
            assert with_probe[key] == value, key  # to the digit: the probe draws no random numbers


def test_table_shows_few_label_rows_as_mean_and_spread():
    from byol.evaluation.report import format_table

    report = {"knn_top1": 80.0, "raw_pixel_knn_top1": 75.5}
    assert format_table(report).splitlines() == [
        "protocol                 BYOL  random init  raw pixels",
        "kNN top-1 (k=200)       80.00            -       75.50",
    ]
    report |= {"few_label_1pct_top1": 81.3, "few_label_1pct_top1_spread": 0.52, "few_label_probe": "how"}
    lines = format_table(report).splitlines()
    assert lines[2].startswith("linear, 1% labels") and "81.30 ± 0.52" in lines[2] and lines[2].endswith("-")
    assert lines[-1] == "few labels: how" and len({len(line) for line in lines[:3]}) == 1  # columns aligned


def test_checkpoint_and_safetensors_give_the_same_encoder(trained_run):
    run, _ = trained_run
    a, info_a = load_encoder(run / "checkpoint.pt")
    b, info_b = load_encoder(run / "backbone.safetensors")
    assert info_a == info_b
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_export_and_embed(trained_run, tmp_path):
    run, _ = trained_run
    exported = tmp_path / "encoder.safetensors"
    assert cli("export", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(exported)).returncode == 0
    weights = load_file(str(exported))
    assert weights.keys() == load_file(str(run / "backbone.safetensors")).keys()

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(np.random.randint(0, 255, (30, 30), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "bad.png").write_bytes(b"nope")
    result = cli("embed", "--checkpoint", str(exported), "--data", str(images), "--out", str(tmp_path / "f.npy"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 5 and summary["skipped"] == 1
    features = np.load(tmp_path / "f.npy")
    files = (tmp_path / "f.files.txt").read_text().split()
    assert features.shape == (5, summary["feature_dim"]) and len(files) == 5 and "bad.png" not in " ".join(files)


def test_online_probe_and_knn_monitor_do_not_change_the_representation(tmp_path, fashion_dir):
    base = {**TINY_RUN, "data": str(fashion_dir), "epochs": 1}
    with_monitor = resolve(overrides={**base, "out": str(tmp_path / "a"), "knn_bank": 100, "knn_test": 50})
    without = resolve(overrides={**base, "out": str(tmp_path / "b"), "online_probe": False, "knn_every": 0})
    train(with_monitor, quiet=True)
    train(without, quiet=True)
    a = load_file(str(tmp_path / "a" / "backbone.safetensors"))
    b = load_file(str(tmp_path / "b" / "backbone.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_errors_are_one_line(tmp_path):
    result = cli("eval", "--checkpoint", str(tmp_path / "missing.pt"))
    assert result.returncode == 2 and "missing.pt" in result.stderr and "Traceback" not in result.stderr
    result = cli("eval", "--checkpoint", str(tmp_path / "x.pt"), "--protocol", "knn,magic")
    assert result.returncode == 2 and "--protocol" in result.stderr
