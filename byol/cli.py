"""The `byol` command. User errors print one line and exit 2; nothing else is caught here."""

from __future__ import annotations

import argparse
import sys

from .errors import UserError


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .backbones import ARCHITECTURES
    from .config import PRESETS
    from .data import DATASETS

    add = parser.add_argument
    add("--preset", choices=PRESETS, help="starting configuration (smoke: <60 s check; cpu-quickstart; gpu)")
    add("--config", metavar="FILE", help="YAML file of options (applied after the preset)")
    add("--dataset", choices=DATASETS)
    add("--data", metavar="PATH", help="dataset location (default: the dataset's usual places)")
    add("--subset", type=int, metavar="N", help="train on a seeded random subset of N images")
    add("--image-size", type=int, metavar="PX", help="training resolution (default: the dataset's own)")
    add("--workers", type=int, help="image-decoding processes for --dataset folder")
    add("--max-bad-fraction", type=float, metavar="F", help="unreadable folder images are skipped and counted; "
        "more than this fraction of the dataset stops the run (default 0.01)")
    add("--crop-min-scale", type=float, metavar="S", help="smallest random-crop area fraction (paper: 0.08)")
    add("--aug-remove", metavar="LIST", help="augmentations to drop, comma-separated: color, grayscale, blur, "
        "solarize, flip, all-but-crop (ablations)")
    add("--method", help="byol (default), simclr or simsiam: baselines on the same backbone, data and optimizer")
    add("--predictor", action=argparse.BooleanOptionalAction, default=None,
        help="--no-predictor: the paper's ablation without the predictor (collapses)")
    add("--negatives-beta", type=float, metavar="B", help="weight of the appendix's contrastive term (0: BYOL)")
    add("--temperature", type=float, help="α of the negatives term; SimCLR's NT-Xent temperature (default 0.1)")
    add("--norm", help="batch (default) or group-ws: GroupNorm + Weight Standardization in encoder and heads")
    add("--backbone", choices=list(ARCHITECTURES))
    add("--stem", help="ResNet stem: auto = cifar (3×3/1) up to 64 px, imagenet (7×7/2 + pool) above; "
        "cifar-pool adds a 2×2 max-pool, 4× cheaper")
    add("--width", type=float, help="channel-width multiplier of the ResNet (0.25 = quarter width)")
    add("--projection-dim", type=int)
    add("--projector-hidden-dim", type=int)
    add("--predictor-hidden-dim", type=int)
    add("--epochs", type=int)
    add("--batch-size", type=int, help="images per step (the LR scales with it: lr × batch / 256)")
    add("--lr", type=float, help="base learning rate before the batch/256 scaling")
    add("--warmup-epochs", type=float)
    add("--optimizer", choices=["lars", "sgd", "adamw"], help="lars (the paper's), momentum sgd, or adamw")
    add("--momentum", type=float)
    add("--weight-decay", type=float)
    add("--trust-coefficient", type=float, help="LARS η")
    add("--base-tau", "--tau-base", dest="base_tau", type=float, help="τ_base of the target EMA schedule; 0 = stop-gradient online network, 1 = fixed random target")
    add("--device", help="auto, cpu, cuda, cuda:N, mps")
    add("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    add("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    add("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the learner")
    add("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
        help="under torchrun, batch norm over the global batch (default on; --no-sync-bn: per-process statistics)")
    add("--seed", type=int)
    add("--out", metavar="DIR", help="run folder (checkpoint, config, metrics, weights)")
    add("--log-every", type=int, metavar="STEPS")
    add("--checkpoint-every", type=int, metavar="STEPS")
    add("--keep-checkpoints", type=int, metavar="K", help="keep the K most recent checkpoints (checkpoint-step<N>.pt)")
    add("--knn-every", type=int, metavar="EPOCHS", help="kNN monitor every N epochs (0: off)")
    add("--knn-bank", type=int, metavar="N", help="training images in the kNN monitor's bank")
    add("--knn-test", type=int, metavar="N", help="test images the kNN monitor scores")
    add("--online-probe", action=argparse.BooleanOptionalAction, default=None,
        help="linear classifier on the detached representation during training")
    add("--tensorboard", action=argparse.BooleanOptionalAction, default=None)
    add("--stop-after-steps", type=int, metavar="N", help="stop at step N with a resumable checkpoint")
    add("--resume", action="store_true", default=None, help="continue from DIR/checkpoint.pt if there is one")
    add("--quiet", action="store_true", help="no progress output")


TRAIN_OPTION_NAMES = (
    "dataset", "data", "subset", "image_size", "workers", "max_bad_fraction", "crop_min_scale", "aug_remove", "method", "predictor",
    "negatives_beta", "temperature", "norm", "backbone", "stem", "width", "projection_dim",
    "projector_hidden_dim", "predictor_hidden_dim", "epochs", "batch_size", "lr", "warmup_epochs", "optimizer",
    "momentum", "weight_decay", "trust_coefficient", "base_tau", "device", "precision", "channels_last", "compile", "sync_bn", "seed",
    "out", "log_every", "checkpoint_every", "keep_checkpoints", "knn_every", "knn_bank", "knn_test", "online_probe", "tensorboard",
    "stop_after_steps", "resume",
)


def config_from_args(args: argparse.Namespace):
    from .config import resolve

    overrides = {name: getattr(args, name) for name in TRAIN_OPTION_NAMES}
    return resolve(args.preset, args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from .train import train

    summary = train(config_from_args(args), quiet=args.quiet)
    from .distributed import launched_as_main

    if args.quiet and launched_as_main():  # under torchrun, one summary for the job
        print(json.dumps(summary))
    # Stopped by a signal after a clean checkpoint: the shell's 128 + N, so schedulers see "not done".
    return 128 + summary["stopped_by_signal"] if summary.get("stopped_by_signal") else 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .report import evaluate_encoder, format_table, log_to_tensorboard, parse_protocols, public, write_plots

    protocols = parse_protocols(args.protocol)
    run_dir = Path(args.out) if args.out else Path(args.checkpoint).parent
    run_dir.mkdir(parents=True, exist_ok=True)
    report = evaluate_encoder(args.checkpoint, protocols, args.dataset, args.data, args.device,
                              baselines=not args.no_baselines, linear_epochs=args.linear_epochs,
                              semi_epochs=args.semi_epochs, seed=args.seed, quiet=args.json, run_dir=run_dir)
    from .checkpoint import atomic_write

    atomic_write(run_dir / "eval.json", lambda tmp: Path(tmp).write_text(json.dumps(public(report), indent=2) + "\n"))
    plots = write_plots(run_dir, report)
    log_to_tensorboard(run_dir, report)
    if args.json:
        print(json.dumps(public(report)))
    else:
        print(format_table(report))
        print(f"\nwritten: {run_dir / 'eval.json'}" + "".join(f", {p.name}" for p in plots))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import json

    from .report import embed

    print(json.dumps(embed(args.checkpoint, args.data, args.out, args.device, args.batch_size)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from .report import export

    print(json.dumps(export(args.checkpoint, args.out)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .bench import bench, format_result

    compare = tuple(p.strip() for p in (args.compare or "").split(",") if p.strip())
    result = bench(args.backbone, args.width, args.image_size, args.batch_size, args.steps, args.warmup, args.device,
                   args.precision, args.channels, args.channels_last, args.compile, compare, args.stem)
    print(json.dumps(result) if args.json else format_result(result))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from .ablate import run_suite

    table = run_suite(args.suite, args.preset, args.out, args.config, quiet=args.quiet)
    print(table.read_text())
    print(f"written: {table}, {table.with_suffix('.png')}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (which option, what is wrong, where help is), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="byol", description="BYOL self-supervised pre-training.")
    parser.add_argument("--version", action="version", version=f"byol {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    train = commands.add_parser("train", help="pre-train an encoder with BYOL")
    _add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    from .data import DATASETS

    evaluate = commands.add_parser("eval", help="kNN, linear probe and semi-supervised fine-tune of an encoder")
    evaluate.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint.pt or backbone.safetensors")
    evaluate.add_argument("--protocol", default="knn,linear", help="comma-separated: knn, linear, semi")
    evaluate.add_argument("--dataset", choices=DATASETS, help="default: the dataset the encoder was trained on")
    evaluate.add_argument("--data", metavar="PATH")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--out", metavar="DIR", help="where eval.json and plots go (default: the checkpoint's folder)")
    evaluate.add_argument("--no-baselines", action="store_true", help="skip random-init and raw-pixel baselines")
    evaluate.add_argument("--linear-epochs", type=int, default=30)
    evaluate.add_argument("--semi-epochs", type=int, default=30)
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the semi-supervised label subsets")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate.set_defaults(func=cmd_eval)

    embed = commands.add_parser("embed", help="feature matrix of a folder of images")
    embed.add_argument("--checkpoint", required=True, metavar="FILE")
    embed.add_argument("--data", required=True, metavar="PATH", help="folder of images")
    embed.add_argument("--out", required=True, metavar="FILE", help="features.npy (+ .files.txt) or .safetensors")
    embed.add_argument("--device", default="auto")
    embed.add_argument("--batch-size", type=int, default=256)
    embed.set_defaults(func=cmd_embed)

    from .backbones import ARCHITECTURES

    bench = commands.add_parser("bench", help="time full training steps; images/s, FLOP/s, utilization, peers")
    bench.add_argument("--backbone", default="resnet18", choices=list(ARCHITECTURES))
    bench.add_argument("--width", type=float, default=1.0)
    bench.add_argument("--stem", default="auto", help="auto, imagenet, cifar or cifar-pool (see byol train --help)")
    bench.add_argument("--image-size", type=int, default=32)
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument("--channels", type=int, default=3)
    bench.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    bench.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    bench.add_argument("--compile", action="store_true", help="torch.compile the learner")
    bench.add_argument("--compare", metavar="LIST", help="peers to run in the same process: byol-pytorch,lightly")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(func=cmd_bench)

    ablate = commands.add_parser("ablate", help="the paper's ablations and SimCLR/SimSiam baselines, side by side")
    ablate.add_argument("--suite", default="paper", help="which grid (paper)")
    ablate.add_argument("--preset", default="cpu", help="smoke (minutes), cpu (about an hour on 2 cores) or gpu")
    ablate.add_argument("--config", metavar="FILE", help="YAML options applied to every variant (e.g. your dataset)")
    ablate.add_argument("--out", default="runs/ablations", metavar="DIR", help="runs, ablations.md and .png go here")
    ablate.add_argument("--quiet", action="store_true")
    ablate.set_defaults(func=cmd_ablate)

    export = commands.add_parser("export", help="write the online encoder of a checkpoint as safetensors")
    export.add_argument("--checkpoint", required=True, metavar="FILE")
    export.add_argument("--out", required=True, metavar="FILE")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .distributed import launched_as_main, launched_world_size

    # Under torchrun every rank hits the same user error; one line is enough.
    speaks = launched_as_main()
    try:
        if args.command != "train" and launched_world_size() > 1:
            raise UserError(f"byol {args.command} runs in one process: launch it without torchrun "
                            "(only `byol train` is distributed)")
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
