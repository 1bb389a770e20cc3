"""The run folder: refusal and resume, metrics.jsonl kept exact, rank-0-only writes, atomic JSON."""

import json

import pytest
import torch

from byol.runtime.checkpoint import TrainingState
from byol.runtime.errors import UserError
from byol.training.config import TrainConfig
from byol.training.run_dir import RunDir


def state(step: int) -> TrainingState:
    return TrainingState(step=step, config={}, model={"w": torch.ones(2)}, optimizer={}, encoder_info={})


def test_a_fresh_folder_starts_fresh_and_an_existing_run_needs_resume(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.state_to_resume(resume=False) is None and run.state_to_resume(resume=True) is None
    run.write_checkpoint(state(7))
    with pytest.raises(UserError, match="exists: pass --resume"):
        run.state_to_resume(resume=False)
    resumed = run.state_to_resume(resume=True)
    assert resumed.step == 7 and torch.equal(resumed.model["w"], torch.ones(2))


def test_start_trims_metrics_to_the_checkpoint_and_drops_torn_lines(tmp_path):
    run = RunDir(tmp_path)
    lines = [json.dumps({"step": s, "loss": 1.0 / (s + 1)}) for s in range(6)]
    run.metrics.write_text("\n".join(lines[:4]) + '\n{"step": 4, "lo\n' + "\n".join(lines[4:]) + "\n")
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 3, 4, 5]  # the torn line is skipped
    run.start(TrainConfig(), {"world_size": 1}, step=3)
    run.append_metrics({"step": 4, "loss": 0.5})
    run.close()
    assert run.metrics.read_text().splitlines() == lines[:4] + ['{"step": 4, "loss": 0.5}']
    assert "resolved:" in run.config.read_text()


def test_a_fresh_start_removes_metrics_of_a_run_that_died_before_its_first_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    run.metrics.write_text('{"step": 1}\n')
    run.start(TrainConfig(), {}, step=0)
    run.close()
    assert run.read_metrics() == []


def test_only_rank_zero_writes(tmp_path):
    other = RunDir(tmp_path / "run", main=False)
    other.start(TrainConfig(), {}, step=0)
    other.append_metrics({"step": 1})
    other.write_checkpoint(state(1))
    other.write_json(RunDir.SUMMARY, {"steps": 1})
    other.close()
    assert not (tmp_path / "run").exists()


def test_json_files_and_the_last_record_holding_a_key(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_json(RunDir.EVAL) is None
    path = run.write_json(RunDir.EVAL, {"knn_top1": 50.0})
    assert path == tmp_path / "eval.json" and run.read_json(RunDir.EVAL) == {"knn_top1": 50.0}
    run.metrics.write_text(
        '{"step": 1, "embedding_std": 0.1}\n{"step": 2, "embedding_std": 0.2}\n{"step": 2, "knn_top1": 10.0}\n'
    )
    assert run.last_metrics_with("embedding_std") == {"step": 2, "embedding_std": 0.2}
    assert run.last_metrics_with("probe_top1") == {}


def test_a_file_that_is_not_a_training_checkpoint_is_one_line(tmp_path):
    run = RunDir(tmp_path)
    torch.save({"something": 1}, run.checkpoint)
    with pytest.raises(UserError, match="not a byol training checkpoint"):
        run.state_to_resume(resume=True)
