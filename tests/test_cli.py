import dataclasses

import pytest

from byol.cli import build_parser, config_from_args
from byol.training.config import TrainConfig


def test_every_config_field_is_a_train_option():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {action.dest for action in train._actions}
    assert fields <= dests


def test_command_line_reaches_the_config():
    args = build_parser().parse_args(
        [
            "train",
            "--preset",
            "smoke",
            "--batch-size",
            "32",
            "--tau-base",
            "0.9",
            "--no-online-probe",
            "--knn-every",
            "0",
            "--channels-last",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.batch_size, cfg.base_tau, cfg.online_probe, cfg.knn_every, cfg.channels_last) == (
        32,
        0.9,
        False,
        0,
        True,
    )
    assert cfg.subset == 512  # untouched preset values survive


@pytest.mark.parametrize(
    "args, named",
    [
        (
            ["--method", "simclr", "--queue-size", "64"],
            "--queue-size: --method simclr does not use it (only mocov2, swav do)",
        ),
        (["--prototypes", "100"], "--prototypes: --method byol does not use it (only swav, dino do)"),
        (["--method", "mocov2", "--predictor-hidden-dim", "64"], "--predictor-hidden-dim: --method mocov2"),
        (["--method", "vicreg", "--teacher-temperature", "0.07"], "--teacher-temperature: --method vicreg"),
        (["--temperature", "0.2"], "--temperature: --method byol does not use it (only simclr, mocov2, swav do)"),
        (["--negatives-temperature", "0.2"], "--negatives-temperature: it is the temperature of the contrastive term"),
        (["--method", "swav", "--no-predictor"], "--no-predictor: --method swav does not take it (a byol ablation)"),
        (["--method", "dino", "--negatives-beta", "1"], "--negatives-beta"),
        (["--method", "mocov2", "--queue-size", "100"], "--method mocov2 needs a queue that is a multiple of"),
    ],
)
def test_an_option_the_method_would_ignore_is_refused_in_one_line(args, named, capsys):
    from byol.cli import main

    assert main(["train", "--preset", "smoke", *args]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and named in error


def test_options_the_method_takes_and_options_every_method_takes_are_accepted():
    for args in (
        ["--method", "swav", "--queue-size", "256", "--prototypes", "100"],
        ["--method", "simclr", "--clip-grad", "1.0", "--norm", "group-ws"],  # every method honours these
        ["--method", "mocov2", "--temperature", "0.5"],
        ["--negatives-beta", "0.5", "--negatives-temperature", "0.2"],  # byol's contrastive ablation
        ["--method", "dino", "--student-temperature", "0.2", "--bottleneck-dim", "32"],
    ):
        config_from_args(build_parser().parse_args(["train", "--preset", "smoke", *args]))
    # a preset's or file's values are not the user's request: only the command line is checked
    assert config_from_args(build_parser().parse_args(["train", "--preset", "ablate-cpu", "--method", "vicreg"]))


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


def _bad_inputs(tmp):
    (tmp / "empty").mkdir()
    (tmp / "unknown.yaml").write_text("batch_size: 32\nbatch_sise: 64\n")
    (tmp / "null.yaml").write_text("batch_size:\n")
    (tmp / "broken.yaml").write_text("batch_size: [1,\n")
    (tmp / "garbage.pt").write_bytes(b"\x00garbage")
    out = ["--out", str(tmp / "run")]
    return [
        (["train", "--backbone", "nope", *out], "--backbone"),
        (["train", "--dataset", "imagenet", *out], "--dataset"),
        (["train", "--batch-size", "-3", *out], "--batch-size"),
        (["train", "--batch-size", "1", *out], "--batch-size"),
        (["train", "--image-size", "4", *out], "--image-size"),
        (["train", "--max-bad-fraction", "2", *out], "--max-bad-fraction"),
        (["train", "--lr", "nan", *out], "--lr"),
        (["train", "--dataset", "folder", "--data", str(tmp / "missing"), *out], str(tmp / "missing")),
        (["train", "--dataset", "folder", "--data", str(tmp / "empty"), *out], str(tmp / "empty")),
        (["train", "--config", str(tmp / "unknown.yaml"), *out], "batch_sise"),
        (["train", "--config", str(tmp / "null.yaml"), *out], "'batch_size' needs a value"),
        (["train", "--config", str(tmp / "broken.yaml"), *out], "broken.yaml"),
        (["train", "--config", str(tmp / "absent.yaml"), *out], "absent.yaml"),
        (["eval", "--checkpoint", str(tmp / "absent.pt")], "absent.pt"),
        (["eval", "--checkpoint", str(tmp / "garbage.pt")], "garbage.pt"),
        (["export", "--checkpoint", str(tmp / "garbage.pt"), "--out", str(tmp / "x.safetensors")], "garbage.pt"),
    ]


def test_every_bad_input_is_one_line_naming_the_option_or_file_with_exit_2(tmp_path, capsys):
    from byol.cli import main

    for argv, named in _bad_inputs(tmp_path):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's own checks (choices, types)
            code = exit.code
        error = capsys.readouterr().err
        assert code == 2, (argv, error)
        assert error.count("\n") == 1 and "Traceback" not in error and named in error, (argv, error)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_help_shows_each_options_default_and_choices(capsys):
    import pytest

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size N global images per step" in text and "(default: 256)" in text
    assert "{byol,simclr,simsiam,mocov2,swav,dino,barlowtwins,vicreg}" in text and "--tau-base" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # bench's own default and help for shared options: one default each, nothing about training's LR
    assert "--image-size PX side of the random square images in pixels (default: 32) --batch-size" in text
    assert "--batch-size N images per timed step (default: 64) --device" in text


def test_bench_options_are_checked_like_train_options(capsys):
    from byol.cli import main

    assert main(["bench", "--width", "-1", "--steps", "1"]) == 2
    assert capsys.readouterr().err.strip() == "byol: error: --width: must be positive, got -1.0"


def _help_problems(parser) -> list[str]:
    """Every option of every sub-command: help that argparse shows, and in it its default stated once, as
    "(default: ...)", or "(required)"."""
    import argparse
    import re

    problems = []
    for name, command in parser._subparsers._group_actions[0].choices.items():  # argparse keeps them here
        formatter = command.formatter_class(name)
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            option = f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                problems.append(f"{option}: no help")
                continue
            text = formatter._expand_help(action)
            mentions = len(re.findall("default", text, re.IGNORECASE))
            if action.required:
                if "(required)" not in text or mentions:
                    problems.append(f"{option}: a required option says '(required)' and no default: {text}")
            elif text.count("(default: ") != 1 or mentions != 1:
                problems.append(f"{option}: states its default {mentions} times, not once as (default: ...): {text}")
    return problems


def test_every_option_of_every_command_has_help_stating_its_default_once():
    assert not _help_problems(build_parser())


def test_the_help_check_catches_missing_help_and_defaults():
    from byol import cli

    parser = cli._Parser(prog="byol")
    command = parser.add_subparsers().add_parser("demo", formatter_class=cli._Help)
    command.add_argument("--no-help", type=int, default=3)  # argparse would show nothing for it
    command.add_argument("--twice", default=32, help="side (default: the dataset's own) (default: 32)")  # bench's was
    command.add_argument("--unsaid", help="what None means is not said")
    command.add_argument("--switch", action="store_true", help="a switch")  # (default: off)
    command.add_argument("--needed", required=True, help="a path")  # (required)
    command.add_argument("--fine", type=int, default=3, help="a number")  # (default: 3)
    problems = _help_problems(parser)
    assert [p.split(":")[0] for p in problems] == ["demo --no-help", "demo --twice", "demo --unsaid"], problems


def _choices(command: str, option: str) -> tuple:
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    return next(a for a in parser._actions if option in a.option_strings).choices


def test_presets_are_one_namespace_that_train_and_ablate_list(capsys):
    from importlib import resources

    from byol.ablate import DEPRECATED_PRESETS, SUITE_PRESETS
    from byol.cli import PRESET_ABOUT
    from byol.training.config import PRESETS

    files = {p.name.removesuffix(".yaml") for p in (resources.files("byol") / "presets").iterdir()}
    assert set(_choices("train", "--preset")) == set(PRESETS) == files == set(PRESET_ABOUT)
    assert set(_choices("ablate", "--preset")) == set(SUITE_PRESETS) and set(SUITE_PRESETS) <= set(PRESETS)
    assert set(DEPRECATED_PRESETS.values()) <= set(SUITE_PRESETS) and not set(DEPRECATED_PRESETS) & set(SUITE_PRESETS)
    for command, names in (("train", PRESETS), ("ablate", SUITE_PRESETS)):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert all(f"{name}: {PRESET_ABOUT[name]}" in text for name in names), (command, text)
    assert build_parser().parse_args(["ablate"]).preset == "ablate-cpu"


@pytest.mark.parametrize("old, new", [("cpu", "ablate-cpu"), ("gpu", "ablate-gpu")])
def test_the_old_ablate_preset_names_still_work_with_a_one_line_note(old, new, capsys):
    assert build_parser().parse_args(["ablate", "--preset", old]).preset == new
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "deprecated" in error and f"--preset {new}" in error
    for name in ("smoke", "ablate-cpu", "ablate-gpu"):
        assert build_parser().parse_args(["ablate", "--preset", name]).preset == name
    assert capsys.readouterr().err == ""


def test_ablate_refuses_a_preset_not_sized_for_a_suite_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["ablate", "--preset", "cpu-quickstart"])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and error.count("\n") == 1 and "choose from 'smoke', 'ablate-cpu'" in error


def test_help_and_option_checks_do_not_import_torchvision():
    """torchvision's import takes over a second (it loads torch._dynamo); `byol train --help` and the option
    checks need none of it, so it loads only when a model or dataset is built (docs/performance.md)."""
    import subprocess
    import sys

    code = (
        "import sys, byol.cli, byol.training.config; byol.cli.build_parser(); "
        "byol.training.config.resolve(overrides={'backbone': 'resnet50', 'width': 0.5}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'timm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
