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
