import json

import yaml

from byol.ablate import RESULT, paper_suite, run_suite
from byol.training.config import resolve
from tests.conftest import TINY_RUN

TINY = {**TINY_RUN, "epochs": 1, "checkpoint_every": 100, "knn_bank": 64, "knn_test": 64}


def test_paper_suite_covers_the_papers_ablations():
    names = {v.name for v in paper_suite(resolve(overrides={"batch_size": 256}))}
    assert {
        "byol",
        "simclr",
        "simsiam",
        "no-predictor",
        "tau-0",
        "tau-0.9",
        "tau-0.99",
        "tau-0.996",
        "tau-1",
        "negatives-beta-1",
        "group-ws",
        "byol-batch-64",
        "simclr-batch-16",
        "byol-no-color",
        "simclr-no-color-grayscale",
        "byol-no-all-but-crop",
        "simclr-no-all-but-crop",
    } <= names


def test_suite_runs_every_variant_writes_the_table_and_resumes(tmp_path, fashion_dir, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": str(fashion_dir)}))
    out = tmp_path / "ablations"
    table = run_suite("paper", "smoke", str(out), str(config), quiet=True)
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob(f"*/{RESULT}"))]
    assert len(results) == len(paper_suite(resolve(overrides=TINY)))
    assert all("error" not in r for r in results), [r.get("error") for r in results]
    assert all(0 <= r["knn_top1"] <= 100 and r["effective_rank"] >= 1 for r in results)
    text = table.read_text()
    assert "| target τ_base | tau-0 | byol |" in text and "effective rank" in text
    assert (out / "ablations.png").stat().st_size > 0
    assert "| reference | random-init encoder |" in text and "| reference | raw pixels |" in text

    # Interrupted suite: a lost result is recomputed, the others are read back, not retrained.
    (out / "runs" / "tau-1" / RESULT).unlink()
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob(f"*/{RESULT}")}
    run_suite("paper", "smoke", str(out), str(config), quiet=True)
    assert (out / "runs" / "tau-1" / RESULT).exists()
    assert all(
        p.stat().st_mtime_ns == stamps[p.parent.name]
        for p in (out / "runs").glob(f"*/{RESULT}")
        if p.parent.name != "tau-1"
    )


def test_methods_suite_trains_and_tables_every_method_with_its_references(tmp_path, fashion_dir):
    from byol.ablate import methods_suite
    from byol.methods import METHODS

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": str(fashion_dir)}))
    variants = methods_suite(resolve(overrides=TINY))
    assert [v.overrides["method"] for v in variants] == list(METHODS)
    out = tmp_path / "methods"
    table = run_suite("methods", "smoke", str(out), str(config), quiet=True)
    assert table.name == "methods.md" and (out / "methods.png").stat().st_size > 0
    results = [json.loads((out / "runs" / v.name / RESULT).read_text()) for v in variants]
    assert all("error" not in r and r["images_per_s"] > 0 for r in results), [r.get("error") for r in results]
    text = table.read_text()
    assert "| method | mocov2 | mocov2 |" in text and "solo-learn CIFAR-10" in text and "| 92.94 |" in text


def test_an_old_preset_name_runs_its_training_preset_with_a_one_line_note(monkeypatch, tmp_path, capsys):
    import pytest

    from byol import ablate
    from byol.runtime.errors import UserError

    started_from = []

    def stop(preset, config_file):  # the suite's first step: record the preset, go no further
        started_from.append(preset)
        raise UserError("stop")

    monkeypatch.setattr(ablate, "resolve", stop)
    for old, new in (("cpu", "ablate-cpu"), ("gpu", "ablate-gpu"), ("ablate-gpu", "ablate-gpu"), ("smoke", "smoke")):
        with pytest.raises(UserError, match="stop"):
            run_suite("paper", old, str(tmp_path))
        assert started_from.pop() == new
        error = capsys.readouterr().err
        assert error.count("\n") == (old != new) and (old == new or f"--preset {old}` is deprecated" in error)
    with pytest.raises(UserError, match="--preset: unknown preset 'gpu-fast'; choose one of smoke, ablate-cpu"):
        run_suite("paper", "gpu-fast", str(tmp_path))
    assert not started_from
