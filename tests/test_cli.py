import dataclasses

from byol.cli import TRAIN_OPTION_NAMES, build_parser, config_from_args
from byol.config import TrainConfig


def test_every_config_field_is_a_train_option():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields == set(TRAIN_OPTION_NAMES)
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {action.dest for action in train._actions}
    assert fields <= dests


def test_command_line_reaches_the_config():
    args = build_parser().parse_args(["train", "--preset", "smoke", "--batch-size", "32", "--tau-base", "0.9",
                                      "--no-online-probe", "--knn-every", "0", "--channels-last"])
    cfg = config_from_args(args)
    assert (cfg.batch_size, cfg.base_tau, cfg.online_probe, cfg.knn_every, cfg.channels_last) == (32, 0.9, False, 0,
                                                                                                   True)
    assert cfg.subset == 512  # untouched preset values survive


def test_commands_other_than_train_refuse_torchrun_with_one_line_from_rank_zero(monkeypatch, capsys):
    from byol.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["export", "--checkpoint", "x.pt", "--out", "y.safetensors"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "byol export runs in one process" in error
    monkeypatch.setenv("RANK", "1")
    assert main(["export", "--checkpoint", "x.pt", "--out", "y.safetensors"]) == 2
    assert capsys.readouterr().err == ""


def test_sync_bn_switch_reaches_the_config():
    args = build_parser().parse_args(["train", "--preset", "smoke", "--no-sync-bn"])
    assert config_from_args(args).sync_bn is False
    assert config_from_args(build_parser().parse_args(["train", "--preset", "smoke"])).sync_bn is True
