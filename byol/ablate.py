"""`byol ablate`: the paper's ablations, and the methods of its comparison table, run with our code
side by side, resumable.

Each variant is an ordinary `byol train` run (in DIR/runs/NAME) followed by kNN and linear evaluation
of its encoder; its result is written to DIR/runs/NAME/ablation.json the moment it is known, so an
interrupted suite picks up where it stopped (a half-trained variant resumes from its checkpoint).
DIR/<suite output>.md and .png (ablations for `paper`, methods for `methods`) are rewritten after
every variant.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from byol.evaluation.report import evaluate_encoder, pyplot
from byol.probes.collapse import is_collapsed
from byol.runtime.checkpoint import atomic_write
from byol.runtime.errors import UserError
from byol.runtime.logs import log, verbosity
from byol.training.config import TrainConfig, merge, resolve
from byol.training.run import train
from byol.training.run_dir import RunDir

# The training presets (`byol train --preset`'s names) a suite can start from: those sized for a grid of
# runs. The suite's own names from before the presets were one namespace still work, with a note.
SUITE_PRESETS = ("smoke", "ablate-cpu", "ablate-gpu")
DEPRECATED_PRESETS = {"cpu": "ablate-cpu", "gpu": "ablate-gpu"}
RESULT = RunDir.ABLATION


@dataclass(frozen=True)
class Variant:
    name: str  # folder name and table row
    group: str  # the paper table it belongs to
    overrides: dict
    paper: str = "–"  # the paper's ImageNet top-1 for this row (300 epochs), for context
    references: dict = field(default_factory=dict)  # published figures for the row, labelled as not ours


def paper_suite(base: TrainConfig) -> list[Variant]:
    """The paper's ablations (docs/method.md): BYOL vs its ablations and vs SimCLR / SimSiam on the same recipe."""
    small, smaller = max(base.batch_size // 4, 2), max(base.batch_size // 16, 2)
    variants = [
        Variant("byol", "baseline", {}, "72.5"),
        Variant("simclr", "baseline", {"method": "simclr"}, "67.9"),
        Variant("simsiam", "baseline", {"method": "simsiam"}),
        Variant("no-predictor", "predictor", {"predictor": False}, "0.2"),
        Variant("tau-0", "target τ_base", {"base_tau": 0.0}, "0.3"),
        Variant("tau-0.9", "target τ_base", {"base_tau": 0.9}, "68.4"),
        Variant("tau-0.99", "target τ_base", {"base_tau": 0.99}, "72.5"),
        Variant("tau-0.996", "target τ_base", {"base_tau": 0.996}),
        Variant("tau-1", "target τ_base", {"base_tau": 1.0}, "18.8"),
        Variant("negatives-beta-1", "negatives", {"negatives_beta": 1.0}, "70.9"),
        Variant("group-ws", "normalisation", {"norm": "group-ws"}, "73.9 (1000 ep; BN 74.3)"),
    ]
    for method in ("byol", "simclr"):
        for batch in (small, smaller):
            variants.append(Variant(f"{method}-batch-{batch}", "batch size", {"method": method, "batch_size": batch}))
    for method in ("byol", "simclr"):
        for removed, paper in (
            ("color", ("71.8", "63.7")),
            ("color,grayscale", ("63.4", "45.7")),
            ("all-but-crop", ("59.4", "40.3")),
        ):
            variants.append(
                Variant(
                    f"{method}-no-{removed.replace(',', '-')}",
                    "augmentations",
                    {"method": method, "aug_remove": removed},
                    paper[method == "simclr"],
                )
            )
    return variants


# The seed document's ImageNet top-1 (ResNet-50 linear; DINO's 77.0 is its ViT figure, the RN50 release is
# 75.3) and solo-learn's CIFAR-10 ResNet-18 1000-epoch linear top-1: references beside our rows, not ours.
METHOD_REFERENCES = {
    "byol": ("74.3", "92.58"),
    "simclr": ("69.3", "–"),
    "simsiam": ("–", "–"),
    "mocov2": ("71.1", "92.94"),
    "swav": ("75.3", "89.17"),
    "dino": ("77.0", "89.52"),
    "barlowtwins": ("73.2", "92.10"),
    "vicreg": ("–", "92.07"),
}


def methods_suite(base: TrainConfig) -> list[Variant]:
    """Every method on the suite's backbone, data, epochs, batch, optimizer and BYOL's augmentation family,
    each with its own heads, temperatures, queue, prototypes and multi-crop at the suite's size
    (docs/methods.md says where each departs from its official recipe, and why)."""
    wide = max(base.projector_hidden_dim, 2048)  # the redundancy-reduction methods need wide projections
    multi_crop = dict(crop_min_scale=0.14, local_crops=6, local_crop_scale=(0.05, 0.14))
    own = {
        "byol": {},
        "simclr": {},
        "simsiam": {},
        "mocov2": dict(queue_size=16 * base.batch_size, temperature=0.2),
        "swav": dict(
            prototypes=3000,
            temperature=0.1,
            sinkhorn_epsilon=0.03,
            freeze_head_epochs=1,
            **multi_crop,
        ),
        "dino": dict(
            prototypes=4096,
            student_temperature=0.1,
            teacher_temperature=0.07,
            teacher_temperature_start=0.07,
            clip_grad=3.0,
            freeze_head_epochs=0.1,
            **multi_crop,
        ),
        "barlowtwins": dict(projection_dim=wide, projector_hidden_dim=wide, lambda_offdiag=0.0051),
        "vicreg": dict(projection_dim=wide, projector_hidden_dim=wide),
    }
    return [
        Variant(
            method,
            "method",
            {"method": method, **options},
            references={
                "seed ImageNet": METHOD_REFERENCES[method][0],
                "solo-learn CIFAR-10": METHOD_REFERENCES[method][1],
            },
        )
        for method, options in own.items()
    ]


@dataclass(frozen=True)
class Suite:
    variants: Callable[[TrainConfig], list[Variant]]
    output: str  # DIR/<output>.md and .png
    references: tuple[str, ...]  # reference columns beside the measured ones
    about: str  # what the references mean, under the title


SUITES = {
    "paper": Suite(
        paper_suite,
        "ablations",
        ("paper",),
        "`paper` is the paper's ImageNet top-1 (300 epochs) for the same change, for the pattern, not the value.",
    ),
    "methods": Suite(
        methods_suite,
        "methods",
        ("seed ImageNet", "solo-learn CIFAR-10"),
        "`seed ImageNet` is the ImageNet top-1 the project's seed document gives for the method and "
        "`solo-learn CIFAR-10` solo-learn's CIFAR-10 ResNet-18 linear top-1 (1000 epochs): published "
        "references at other scales, not ours.",
    ),
}


def suite_preset(name: str) -> str:
    """The training preset's name for `name`: an old suite name (`DEPRECATED_PRESETS`) is translated with a
    one-line note on stderr; any other name is returned as it is."""
    if name in DEPRECATED_PRESETS:
        new = DEPRECATED_PRESETS[name]
        print(
            f"byol: warning: `byol ablate --preset {name}` is deprecated; it is --preset {new}, the same preset",
            file=sys.stderr,
        )
        return new
    return name


def run_suite(suite: str, preset: str, out: str, config_file: str | None = None, quiet: bool = False) -> Path:
    if suite not in SUITES:
        raise UserError(f"--suite: unknown suite '{suite}'; choose one of {', '.join(SUITES)}")
    preset = suite_preset(preset)
    if preset not in SUITE_PRESETS:
        raise UserError(f"--preset: unknown preset '{preset}'; choose one of {', '.join(SUITE_PRESETS)}")
    base = resolve(preset, config_file)
    # Monitors that do not change the table are off: they cost time and each run is evaluated after.
    base = dataclasses.replace(base, knn_every=0, online_probe=False, tensorboard=False)
    out_dir = Path(out)
    variants = SUITES[suite].variants(base)
    results = []
    with verbosity(quiet):
        for number, variant in enumerate(variants, 1):
            run = RunDir(out_dir / "runs" / variant.name)
            earlier = run.read_json(RESULT)
            if earlier is not None:
                log.info(f"[{number}/{len(variants)}] {variant.name}: done earlier")
                results.append(earlier)
                continue
            log.info(f"[{number}/{len(variants)}] {variant.name}")
            results.append(run_variant(variant, base, run, preset))
            log.info(f"    {summary_line(results[-1])}")
            write_outputs(out_dir, results, suite, preset, base)
        reference = reference_scores(out_dir, variants[0], base, preset)
    write_outputs(out_dir, results, suite, preset, base, reference)
    return out_dir / f"{SUITES[suite].output}.md"


def run_variant(variant: Variant, base: TrainConfig, run: RunDir, preset: str) -> dict:
    """Train and evaluate one variant; its result (or the error that stopped it) is saved in its run folder."""
    cfg = merge(base, {**variant.overrides, "out": str(run.path), "resume": True}, f"variant {variant.name}")
    cfg.validate()
    started = time.perf_counter()
    result = {
        "name": variant.name,
        "group": variant.group,
        "method": cfg.method,
        "overrides": variant.overrides,
        "paper_top1": variant.paper,
        "references": {**variant.references, "paper": variant.paper},
    }
    try:
        summary = train(cfg, quiet=True)
        report = evaluate_encoder(
            str(run.encoder),
            ["knn", "linear"],
            cfg.dataset,
            cfg.data,
            cfg.device,
            baselines=False,
            linear_epochs=base_linear_epochs(preset),
            quiet=True,
        )
        last = run.last_metrics_with("embedding_std")
        result.update(
            knn_top1=report["knn_top1"],
            linear_top1=report["linear_top1"],
            embedding_std=last.get("embedding_std"),
            effective_rank=last.get("effective_rank"),
            projection_dim=last.get("embedding_dim", cfg.projection_dim),
            images_per_s=summary.get("images_per_s"),
            train_s=summary.get("wall_s"),
        )
    except UserError as error:
        # A variant that diverges is a result too (the paper's collapsed rows); record it, go on.
        result["error"] = str(error)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    run.write_json(RESULT, result)
    return result


def reference_scores(out_dir: Path, first: Variant, base: TrainConfig, preset: str) -> dict:
    """Random-init encoder (same architecture) and raw pixels under the same evaluation, once per suite."""
    path = out_dir / "reference.json"
    if path.exists():
        return json.loads(path.read_text())
    encoder = RunDir(out_dir / "runs" / first.name).encoder
    if not encoder.exists():
        return {}
    log.info("reference rows: random-init encoder and raw pixels")
    report = evaluate_encoder(
        str(encoder),
        ["knn", "linear"],
        base.dataset,
        base.data,
        base.device,
        baselines=True,
        linear_epochs=base_linear_epochs(preset),
        quiet=True,
    )
    reference = {
        k: report[k]
        for k in ("random_init_knn_top1", "random_init_linear_top1", "raw_pixel_knn_top1", "raw_pixel_linear_top1")
    }
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(reference, indent=2) + "\n"))
    return reference


def base_linear_epochs(preset: str) -> int:
    return 5 if preset == "smoke" else 30


def _number(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_line(result: dict) -> str:
    if "error" in result:
        return f"failed: {result['error']}"
    return (
        f"kNN {result['knn_top1']:.2f}  linear {result['linear_top1']:.2f}  embedding_std×√d "
        f"{std_ratio(result):.3f}  effective_rank {result['effective_rank']:.1f}  ({result['wall_s']:.0f} s)"
    )


def std_ratio(result: dict) -> float | None:
    """embedding_std relative to the healthy 1/√d: 1 is evenly spread, 0 is collapsed."""
    if result.get("embedding_std") is None:
        return None
    return result["embedding_std"] * result["projection_dim"] ** 0.5


def collapsed(result: dict) -> bool:
    if result.get("embedding_std") is None:
        return False
    return is_collapsed(result, result["projection_dim"])


def write_outputs(
    out_dir: Path, results: list[dict], suite: str, preset: str, base: TrainConfig, reference: dict | None = None
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = SUITES[suite]
    columns = [
        "group",
        "variant",
        "method",
        "kNN top-1",
        "linear top-1",
        "images/s",
        "wall (min)",
        "embedding_std×√d",
        "effective rank",
        "collapsed",
        *spec.references,
    ]
    lines = [
        f"# `byol ablate --suite {suite}`, preset `{preset}`",
        "",
        f"Base recipe: {base.dataset}, {base.backbone} ×{base.width} ({base.stem} stem), {base.epochs} epochs, "
        f"batch {base.batch_size}, {base.optimizer} lr {base.lr}, τ_base {base.base_tau}. Every row changes only "
        "what its name says. kNN (k=200) and linear top-1 on the full test split; images/s over the training run; "
        "wall time of training and evaluation; embedding_std×√d is 1 for embeddings spread evenly over the sphere "
        "and 0 for a collapsed run; effective rank is RankMe of the representation on the last logged batch. "
        + spec.about,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += [_row(r, spec.references) for r in results]
    if reference:
        blank = " |" * (len(columns) - 5)
        lines.append(
            f"| reference | random-init encoder | – | {_number(reference['random_init_knn_top1'])} | "
            f"{_number(reference['random_init_linear_top1'])} |{blank}"
        )
        lines.append(
            f"| reference | raw pixels | – | {_number(reference['raw_pixel_knn_top1'])} | "
            f"{_number(reference['raw_pixel_linear_top1'])} |{blank}"
        )
    total = sum(r.get("wall_s", 0) for r in results)
    lines += ["", f"{len(results)} variants, {total / 60:.1f} min of training and evaluation."]
    atomic_write(out_dir / f"{spec.output}.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    write_png(out_dir / f"{spec.output}.png", results)


def _row(r: dict, reference_columns: tuple[str, ...]) -> str:
    references = [
        r.get("references", {}).get(name, r.get("paper_top1", "–") if name == "paper" else "–")
        for name in reference_columns
    ]
    head = f"| {r['group']} | {r['name']} | {r['method']} |"
    if "error" in r:
        return head + f" failed: {r['error']} |" + " |" * 6 + "".join(f" {x} |" for x in references)
    cells = [
        _number(r["knn_top1"]),
        _number(r["linear_top1"]),
        _number(r.get("images_per_s"), 0),
        _number(r["wall_s"] / 60 if r.get("wall_s") else None, 1),
        _number(std_ratio(r), 3),
        _number(r["effective_rank"], 1),
        "yes" if collapsed(r) else "no",
        *references,
    ]
    return head + "".join(f" {c} |" for c in cells)


def write_png(path: Path, results: list[dict]) -> None:
    plt = pyplot()
    done = [r for r in results if "error" not in r]
    if not done:
        return
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(done) + 1.2))
    names = [r["name"] for r in done][::-1]
    groups = sorted({r["group"] for r in done})
    colours = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    bars = ax.barh(names, [r["linear_top1"] for r in done][::-1], color=[colours[r["group"]] for r in done][::-1])
    for bar, r in zip(bars, done[::-1]):
        if collapsed(r):
            ax.text(
                bar.get_width() + 0.5,
                bar.get_y() + bar.get_height() / 2,
                "collapsed",
                va="center",
                fontsize=7,
                color="red",
            )
    ax.set_xlabel("linear top-1 (%)")
    ax.legend([plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in groups], groups, fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
