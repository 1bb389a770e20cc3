"""Checkpoints: atomic, the last K kept, a full disk loses nothing, and no file we load can run code."""

import errno
import os
import pickle

import pytest
import torch

from byol.runtime import checkpoint as checkpoint_module
from byol.runtime.checkpoint import load_checkpoint, load_weights, save_checkpoint
from byol.runtime.errors import UserError
from byol.training.config import resolve
from byol.training.run import train
from tests.conftest import TINY_RUN


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize(
    "write",
    [
        lambda path, payload: torch.save({"model": payload}, path),  # a zip checkpoint with a code-running object
        lambda path, payload: path.write_bytes(pickle.dumps(payload)),  # a bare pickle
    ],
)
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, write):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    write(path, _RunsCode(marker))
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()
    with pytest.raises(UserError):
        load_weights(path)  # not safetensors either
    assert not marker.exists()


def test_keep_last_k_checkpoints(tmp_path, fashion_dir):
    cfg = resolve(
        overrides={
            **TINY_RUN,
            "data": str(fashion_dir),
            "out": str(tmp_path / "run"),
            "keep_checkpoints": 2,
            "checkpoint_every": 1,
            "knn_every": 0,
        }
    )
    train(cfg, quiet=True)
    kept = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-step*.pt"))
    assert kept == ["checkpoint-step000000007.pt", "checkpoint-step000000008.pt"]
    assert load_checkpoint(tmp_path / "run" / kept[0])["step"] == 7
    assert os.path.samefile(tmp_path / "run" / kept[1], tmp_path / "run" / "checkpoint.pt")  # a link, no copy


def test_full_disk_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, fashion_dir, monkeypatch):
    real_save, calls = torch.save, [0]

    def save(obj, path, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:  # the third checkpoint: the disk is full halfway through
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    cfg = resolve(
        overrides={
            **TINY_RUN,
            "data": str(fashion_dir),
            "out": str(tmp_path / "run"),
            "checkpoint_every": 2,
            "knn_every": 0,
        }
    )
    with pytest.raises(UserError) as error:
        train(cfg, quiet=True)
    assert "No space left on device" in str(error.value) and "previous file is kept" in str(error.value)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 4  # the second one, intact
    assert not list((tmp_path / "run").glob(".checkpoint.pt.*"))  # no temp file left behind


def test_save_checkpoint_is_atomic(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    with pytest.raises(KeyboardInterrupt):
        checkpoint_module.atomic_write(path, lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt))
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["c.pt"]
