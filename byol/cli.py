"""The `byol` command. User errors print one line and exit 2; nothing else is caught here.

`byol train`'s options, and the options other commands share with it, are derived from the fields of
`TrainConfig` (config.py), where each is written once with its help, choices and check.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import types
import typing
from pathlib import Path

from byol import __version__
from byol.ablate import SUITE_PRESETS, SUITES, run_suite, suite_preset
from byol.bench import GRAPH_WARMUP, bench, format_result
from byol.data.datasets import DATASETS
from byol.evaluation.export import FORMATS, export_encoder
from byol.evaluation.report import embed, evaluate_encoder, format_table, parse_protocols, public, write_report
from byol.methods import METHODS, method_defaults
from byol.runtime.distributed import launched_as_main, launched_world_size
from byol.runtime.errors import UserError
from byol.training.config import (
    FIELDS,
    PRESETS,
    TrainConfig,
    check_method_takes,
    check_options,
    command_line_reader,
    flag,
    read_yaml,
    resolve,
    with_new_names,
)
from byol.training.run import train

_TYPES = typing.get_type_hints(TrainConfig)


def _base_type(name: str):
    """The field's type without its `| None`."""
    hint = _TYPES[name]
    if typing.get_origin(hint) is types.UnionType:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def shown(value) -> str:
    """A default as the help shows it: on/off for switches, none for empty, numbers as typed."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return "none" if value == "" else str(value)


def recipe_values(name: str) -> str:
    """'; mocov2, dino: 0.03; swav: 0.6': the methods whose recipe (methods.method_defaults, which `resolve`
    applies before a preset) gives option `name` another value than its default, or ''."""
    by_value: dict = {}
    default = FIELDS[name].default
    for method in METHODS:
        value = method_defaults(method).get(name, default)
        value = float(value) if isinstance(default, float) and isinstance(value, int) else value
        if value != default:
            by_value.setdefault(shown(value), []).append(method)
    return "".join(f"; {', '.join(methods)}: {value}" for value, methods in by_value.items())


def add_config_arguments(
    parser: argparse.ArgumentParser,
    names=None,
    defaults: dict | None = None,
    helps: dict | None = None,
    recipes: bool = False,
) -> None:
    """One argument per TrainConfig field (or the `names` given), typed, with choices, help and default
    taken from the field. Arguments default to None, meaning "not given": the config's own default, a
    preset or a YAML file decides. `defaults` gives another command its own defaults for shared options,
    `helps` its own help for them; `recipes` adds the methods' recipe values to the default shown."""
    for name in names or FIELDS:
        field, kind = FIELDS[name], _base_type(name)
        meta = field.metadata
        default = (defaults or {}).get(name, field.default)
        text = (helps or {}).get(name, meta["help"])
        if "(default" not in text:  # a field whose default is None says what None means in its own help
            text += f" (default: {shown(default)}{recipe_values(name) if recipes else ''})"
        options = {"dest": name, "help": text, "default": (defaults or {}).get(name)}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options.update(type=typing.get_args(kind)[0], nargs=len(typing.get_args(kind)), metavar=meta["metavar"])
        else:
            metavar = meta["metavar"] or {int: "N", float: "X"}.get(kind, "TEXT")
            options.update(type=command_line_reader(name), metavar=metavar)
            if meta["choices"]:
                options.update(choices=meta["choices"], metavar=None)
        parser.add_argument(flag(name), *meta["aliases"], **options)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {name: getattr(args, name) for name in FIELDS}
    config = resolve(args.preset, args.config or resumed_config(args), overrides)
    given = with_new_names({name: value for name, value in overrides.items() if value is not None}, args.method)
    check_method_takes(config, list(given))
    return config


def resumed_config(args: argparse.Namespace) -> str | None:
    """`--out DIR --resume` alone continues DIR as it was configured: its config.yaml, under the command line."""
    saved = Path(args.out or "") / "config.yaml"
    return str(saved) if args.resume and args.out and not args.preset and saved.is_file() else None


def cmd_train(args: argparse.Namespace) -> int:
    summary = train(config_from_args(args), quiet=args.quiet)
    if args.quiet and launched_as_main():  # under torchrun, one summary for the job
        print(json.dumps(summary))
    # Stopped by a signal after a clean checkpoint: the shell's 128 + N, so schedulers see "not done".
    return 128 + summary["stopped_by_signal"] if summary.get("stopped_by_signal") else 0


def run_folder(checkpoint: str) -> Path:
    """The run folder a `--checkpoint` names: the folder itself, or the one its file is in."""
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def recorded_data(checkpoint: str, data: str | None) -> str | None:
    """`--data`, else the data path the run folder's config.yaml recorded (a folder run needs it again)."""
    if data:
        return data
    saved = run_folder(checkpoint) / "config.yaml"
    recorded = read_yaml(str(saved)).get("data") if saved.is_file() else None
    if recorded and not Path(recorded).exists():
        raise UserError(f"{saved}: the run's data {recorded} is not there (moved?): pass --data PATH")
    return recorded


def cmd_eval(args: argparse.Namespace) -> int:
    protocols = parse_protocols(args.protocol)
    check_options({"device": args.device, "workers": args.workers})
    run_dir = Path(args.out) if args.out else run_folder(args.checkpoint)
    run_dir.mkdir(parents=True, exist_ok=True)
    report = evaluate_encoder(
        args.checkpoint,
        protocols,
        args.dataset,
        recorded_data(args.checkpoint, args.data),
        args.device,
        baselines=not args.no_baselines,
        linear_epochs=args.linear_epochs,
        semi_epochs=args.semi_epochs,
        seed=args.seed,
        quiet=args.json,
        run_dir=run_dir,
        workers=args.workers,
    )
    written = write_report(run_dir, report)
    if args.json:
        print(json.dumps(public(report)))
    else:
        print(format_table(report))
        print(f"\nwritten: {written[0]}" + "".join(f", {p.name}" for p in written[1:]))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    check_options({"device": args.device, "workers": args.workers})
    data = recorded_data(args.checkpoint, args.data)
    if data is None:
        raise UserError("--data: which folder of images? (the checkpoint's run folder records none)")
    print(json.dumps(embed(args.checkpoint, data, args.out, args.device, args.batch_size, args.workers)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    print(json.dumps(export_encoder(args.checkpoint, args.out, args.format)))
    return 0


BENCH_OPTIONS = (
    "backbone",
    "width",
    "stem",
    "image_size",
    "batch_size",
    "device",
    "precision",
    "channels_last",
    "cuda_graphs",
)
BENCH_DEFAULTS = {"image_size": 32, "batch_size": 64}
# Shared options that mean something else here than in training: random images, one timed step each.
BENCH_HELP = {
    "image_size": "side of the random square images in pixels",
    "batch_size": "images per timed step",
}


def cmd_bench(args: argparse.Namespace) -> int:
    check_options({name: getattr(args, name) for name in BENCH_OPTIONS})
    compare = tuple(p.strip() for p in (args.compare or "").split(",") if p.strip())
    result = bench(
        args.backbone,
        args.width,
        args.image_size,
        args.batch_size,
        args.steps,
        args.warmup,
        args.device,
        args.precision,
        args.channels,
        args.channels_last,
        args.compile,
        compare,
        args.stem,
        args.cuda_graphs,
    )
    print(json.dumps(result) if args.json else format_result(result))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    table = run_suite(args.suite, args.preset, args.out, args.config, quiet=args.quiet)
    print(table.read_text())
    print(f"written: {table}, {table.with_suffix('.png')}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (which option, what is wrong, where help is), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Ends each option's help with its default in one form, "(default: 256)" ("(default: off)" for a
    switch), or "(required)"; a help that states its default (config options, and defaults that are not
    a value) is left as it is. An option without help, or with a default of None its help does not
    explain, shows none: tests/test_cli.py refuses both."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not text or "(default" in text or action.default == argparse.SUPPRESS:
            return action.help
        if action.required:
            return f"{text} (required)"
        if isinstance(action.default, bool):
            return f"{text} (default: {shown(action.default)})"
        if action.default is None:
            return action.help
        return super()._get_help_string(action)

    def _split_lines(self, text, width):  # never break a name such as ablate-cpu at its hyphen
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="byol",
        description="BYOL self-supervised pre-training (and the methods it is compared with), evaluation and export.",
        epilog="`byol COMMAND --help` lists a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"byol {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, formatter_class=_Help)
        sub.set_defaults(func=func)
        return sub

    for add_command in (
        _train_command,
        _eval_command,
        _embed_command,
        _bench_command,
        _ablate_command,
        _export_command,
    ):
        add_command(command)
    return parser


# What each preset (byol/presets/NAME.yaml) is for, in `byol train --help` and `byol ablate --help`.
PRESET_ABOUT = {
    "smoke": "a few steps on 512 images, a check of the whole pipeline",
    "cpu-quickstart": "the README's main job on 2 CPU cores",
    "gpu": "full-width ResNet-18, 300 epochs, one GPU",
    "ablate-cpu": "byol ablate's grid on 2 CPU cores, 15k images, 3 epochs a run",
    "ablate-gpu": "byol ablate's grid on one GPU, full width, 50 epochs a run",
}


def _presets(names) -> str:
    return "; ".join(f"{name}: {PRESET_ABOUT[name]}" for name in names)


# Each adds one subcommand through `command(name, help, func)`, in the order `byol --help` lists them.
def _train_command(command) -> None:
    train = command("train", "pre-train an encoder (BYOL, or another --method)", cmd_train)
    train.usage = "byol train [--preset NAME] [--config FILE] [OPTION ...]"
    train.epilog = (
        "Each option's default is its built-in value, followed by the other values the --method recipes "
        "give it (docs/methods.md). A --preset's values replace them, a --config file's the preset's, and the "
        "command line's all."
    )
    train.add_argument(
        "--preset",
        choices=PRESETS,
        help=f"starting configuration ({_presets(PRESETS)}) (default: none: the built-in values below)",
    )
    train.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file of options, applied after the preset (default: none; with --resume --out DIR and no "
        "--preset, DIR/config.yaml if there is one: the run's own)",
    )
    add_config_arguments(train, recipes=True)
    train.add_argument("--quiet", action="store_true", help="no progress output; a JSON summary on stdout")


def _eval_command(command) -> None:
    evaluate = command("eval", "kNN, linear probe and semi-supervised fine-tune of an encoder", cmd_eval)
    evaluate.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="a run folder, its checkpoint.pt or backbone.safetensors"
    )
    evaluate.add_argument("--protocol", default="knn,linear", metavar="LIST", help="comma-separated: knn, linear, semi")
    evaluate.add_argument(
        "--dataset",
        choices=tuple(DATASETS),
        help="dataset to evaluate on (default: the one the encoder was trained on)",
    )
    evaluate.add_argument(
        "--data",
        metavar="PATH",
        help="dataset location (default: the data path the run folder's config.yaml records, else the "
        "dataset's usual places)",
    )
    evaluate.add_argument("--device", default="auto", help=FIELDS["device"].metadata["help"])
    evaluate.add_argument(
        "--out", metavar="DIR", help="where eval.json and plots go (default: the run folder the checkpoint is in)"
    )
    evaluate.add_argument("--no-baselines", action="store_true", help="skip random-init and raw-pixel baselines")
    evaluate.add_argument(
        "--linear-epochs", type=int, default=30, metavar="N", help="epochs of the linear probe's training"
    )
    evaluate.add_argument(
        "--semi-epochs", type=int, default=30, metavar="N", help="epochs of each semi-supervised fine-tune"
    )
    evaluate.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the semi-supervised label subsets and random-init baseline",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_config_arguments(evaluate, ("workers",))


def _embed_command(command) -> None:
    embed = command("embed", "feature matrix of a folder of images", cmd_embed)
    embed.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="a run folder, its checkpoint.pt or backbone.safetensors"
    )
    embed.add_argument(
        "--data", metavar="PATH", help="folder of images (default: the data path the run folder's config.yaml records)"
    )
    embed.add_argument("--out", required=True, metavar="FILE", help="features.npy (+ .files.txt) or .safetensors")
    embed.add_argument("--device", default="auto", help=FIELDS["device"].metadata["help"])
    embed.add_argument(
        "--batch-size", type=int, default=256, metavar="N", help="images per forward pass of the encoder"
    )
    add_config_arguments(embed, ("workers",))


def _bench_command(command) -> None:
    bench = command("bench", "time full training steps; images/s, FLOP/s, utilization, peers", cmd_bench)
    defaults = {**{n: FIELDS[n].default for n in BENCH_OPTIONS}, **BENCH_DEFAULTS}
    add_config_arguments(bench, BENCH_OPTIONS, defaults, BENCH_HELP)
    bench.add_argument("--channels", type=int, default=3, metavar="N", help="channels of the random images")
    bench.add_argument("--steps", type=int, default=20, metavar="N", help="timed steps (the median is reported)")
    bench.add_argument(
        "--warmup",
        type=int,
        default=3,
        metavar="N",
        help=f"untimed steps first (default: 3; with --cuda-graphs at least {GRAPH_WARMUP})",
    )
    bench.add_argument("--compile", action="store_true", help="torch.compile the learner")
    bench.add_argument(
        "--compare", metavar="LIST", help="peers to run in the same process: byol-pytorch,lightly (default: none)"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")


def _ablate_command(command) -> None:
    ablate = command(
        "ablate", "the paper's ablations, or the methods of its comparison table, side by side", cmd_ablate
    )
    ablate.add_argument(
        "--suite",
        default="paper",
        choices=tuple(SUITES),
        help="paper: BYOL's ablations and baselines; methods: the eight methods",
    )
    ablate.add_argument(
        "--preset",
        default="ablate-cpu",
        type=suite_preset,  # an old name (cpu, gpu) becomes its preset's, with a note on stderr
        choices=SUITE_PRESETS,
        help=f"the `byol train --preset` every variant starts from ({_presets(SUITE_PRESETS)})",
    )
    ablate.add_argument(
        "--config", metavar="FILE", help="YAML options applied to every variant, e.g. your dataset (default: none)"
    )
    ablate.add_argument("--out", default="runs/ablations", metavar="DIR", help="runs, ablations.md and .png go here")
    ablate.add_argument("--quiet", action="store_true", help="no progress lines; the table is still printed")


def _export_command(command) -> None:
    export = command("export", "write the trained encoder for byol, torchvision, timm or ONNX", cmd_export)
    export.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a run folder, checkpoint.pt, backbone.safetensors or a safetensors export",
    )
    export.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    export.add_argument(
        "--format",
        choices=FORMATS,
        help="safetensors: byol's file (byol.load_encoder); torchvision/timm: the state_dict of the "
        "original class, strict=True; onnx: checked with onnxruntime when installed "
        "(default: onnx for a .onnx file, else safetensors)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun every rank hits the same user error; one line is enough.
    speaks = launched_as_main()
    try:
        if args.command != "train" and launched_world_size() > 1:
            raise UserError(
                f"byol {args.command} runs in one process: launch it without torchrun "
                "(only `byol train` is distributed)"
            )
        return args.func(args)
    except UserError as error:
        if speaks:
            print(f"byol: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("byol: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
