"""How byol speaks: one line per message, quiet and rank aware; the step logger's collapse warning."""

import logging

from byol.runtime.logs import log, verbosity
from byol.training.config import TrainConfig
from byol.training.run_dir import RunDir
from byol.training.step_logger import StepLogger


def test_messages_are_one_plain_line_and_warnings_say_so(capsys):
    with verbosity():
        log.info("hello")
        log.warning("careful")
    assert capsys.readouterr().err == "hello\nwarning: careful\n"


def test_quiet_keeps_warnings_and_other_ranks_stay_silent(capsys):
    with verbosity(quiet=True):
        log.info("progress")
        log.warning("still shown")
    with verbosity(main=False):
        log.warning("rank 1 says nothing")
    assert capsys.readouterr().err == "warning: still shown\n"
    assert log.level == logging.INFO  # restored after each block


def record(step: int, std: float, rank: float = 20.0) -> dict:
    return {
        "step": step,
        "epoch": step / 10,
        "loss": 1.0,
        "lr": 0.1,
        "images_per_s": 100.0,
        "embedding_std": std,
        "effective_rank": rank,
        "embedding_dim": 16,
    }


def test_collapse_is_warned_once_and_its_recovery_noted(tmp_path, capsys):
    run = RunDir(tmp_path)
    run.start(TrainConfig(), {}, step=0)
    logger = StepLogger(run, main=True, quiet=True, tensorboard=False, total_steps=10, first_step=0)
    with verbosity(quiet=False):
        for step, std in ((1, 0.25), (2, 0.001), (3, 0.001), (4, 0.25)):
            logger.log_step(record(step, std))
    logger.close()
    run.close()
    err = capsys.readouterr().err
    assert err.count("collapsed at step 2") == 1 and "step 4: no longer collapsed" in err
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4]
    assert logger.progress_fields(record(5, 0.25)) == {"loss": 1.0, "lr": 0.1, "img/s": 100, "rank": 20.0}


def test_other_ranks_write_nothing(tmp_path):
    run = RunDir(tmp_path / "run", main=False)
    logger = StepLogger(run, main=False, quiet=False, tensorboard=True, total_steps=10, first_step=0)
    logger.log_step(record(1, 0.25))
    logger.close()
    assert not (tmp_path / "run").exists()
