"""`byol eval` and `byol embed`: run the protocols of evaluate.py and write what they found."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from byol.data.augment import EvalTransform
from byol.data.datasets import ImageDataset, dataset_images, decoding_workers, iterate_split, load_dataset, scan_folder
from byol.evaluation.export import read_encoder
from byol.probes.features import (
    RAW_PIXEL_MAX_SIDE,
    RAW_PIXEL_SIDE,
    SplitFeatures,
    encode,
    pixel_features,
    split_features,
)
from byol.probes.protocols import (
    FEW_LABEL_L2,
    FEW_LABEL_SUBSETS,
    balanced_subset,
    few_label_probe,
    few_label_subsets,
    fine_tune,
    knn_accuracies,
    linear_probe,
    random_encoder,
)
from byol.runtime.checkpoint import EncoderInfo, atomic_write
from byol.runtime.device import resolve_device
from byol.runtime.errors import UserError
from byol.runtime.logs import TensorBoard, log, verbosity
from byol.training.run_dir import RunDir

PROTOCOLS = ("knn", "linear", "semi")
SEMI_FRACTIONS = {"1pct": 0.01, "10pct": 0.10}  # the semi fine-tune's, and the few-label probe's
FEW_LABEL_PROBE = (  # said in eval.json and under the table
    "logistic head on frozen features standardised per subset, L-BFGS, L2 {l2:g}/n; "
    "mean ± spread (max - min) of top-1 over {count} seeded class-balanced label subsets"
)


def parse_protocols(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown or not names:
        raise UserError(
            f"--protocol: unknown protocol {', '.join(unknown) or '(none)'}; choose from {', '.join(PROTOCOLS)}"
        )
    return names


def load_splits(dataset_name: str, data: str | None, info: EncoderInfo, checkpoint: str):
    """The train and test splits to evaluate on; the test split's classes numbered by the training split's."""
    train = load_dataset(dataset_name, data, "train", load_size=info.image_size)
    test = load_dataset(dataset_name, data, "test", load_size=info.image_size, classes=train.classes)
    if train.labels is None or test.labels is None:
        raise UserError(f"{dataset_name}: evaluation needs labels (sub-folders per class for --dataset folder)")
    if train.channels != info.in_channels:
        raise UserError(
            f"{checkpoint}: encoder expects {info.in_channels}-channel images, {dataset_name} has {train.channels}"
        )
    return train, test


def _score_features(
    prefix: str,
    train: SplitFeatures,
    test: SplitFeatures,
    num_classes: int,
    protocols,
    report,
    linear_epochs,
    device: torch.device,
    few_label: dict[str, list[torch.Tensor]] | None = None,
) -> None:
    name = prefix or "encoder"
    if "knn" in protocols:
        accuracy = knn_accuracies(
            train.features[name],
            train.labels,
            test.features[name],
            test.labels,
            num_classes,
            ks=(200, 20),
            device=device,
        )
        report[f"{prefix}knn_top1"], report[f"{prefix}knn20_top1"] = accuracy[200], accuracy[20]
    if "linear" in protocols:
        result = linear_probe(
            train.features[name],
            train.labels,
            test.features[name],
            test.labels,
            num_classes,
            epochs=linear_epochs,
            device=device,
        )
        report[f"{prefix}linear_top1"] = result["top1"]
        report[f"{prefix}linear_top5"] = result["top5"]
        report[f"{prefix}linear_weight_decay"] = result["weight_decay"]
    for fraction, subsets in (few_label or {}).items():
        accuracies = few_label_probe(
            train.features[name], train.labels, test.features[name], test.labels, num_classes, subsets, device=device
        )
        key = f"{prefix}few_label_{fraction}_top1"
        report[key] = sum(accuracies) / len(accuracies)
        report[f"{key}_spread"] = max(accuracies) - min(accuracies)
        report[f"{key}_per_subset"] = accuracies


def _few_label_subsets(protocols, labels: torch.Tensor, count: int, seed: int, report: dict):
    """fraction name → the few-label probe's label subsets, or None where it does not run. Drawn once, so
    the encoder and both baselines are scored on the same labelled images."""
    if "linear" not in protocols or count <= 0:
        return None
    report["few_label_probe"] = FEW_LABEL_PROBE.format(l2=FEW_LABEL_L2, count=count)
    return {name: few_label_subsets(labels, fraction, count, seed) for name, fraction in SEMI_FRACTIONS.items()}


def _extractors(encoder: torch.nn.Module, info: EncoderInfo, device, seed: int, baselines: bool) -> dict:
    """Image batch → features, for the encoder and, with `baselines`, the context every figure needs: a
    random-init encoder of the same architecture, and raw pixels."""
    transform = EvalTransform(info.image_size, info.mean, info.std).to(device)
    extractors = {"encoder": lambda images: encode(encoder, images, transform, device)}
    if baselines:
        rand = random_encoder(info, seed).to(device)
        extractors["random_init_"] = lambda images: encode(rand, images, transform, device)
        extractors["raw_pixel_"] = lambda images: pixel_features(images, info.mean, info.std)
    return extractors


def _header(checkpoint, dataset_name: str, info: EncoderInfo, train_x, test_x, protocols: list[str]) -> dict:
    return {
        "checkpoint": str(checkpoint),
        "dataset": dataset_name,
        "backbone": info.backbone,
        "width": info.width,
        "image_size": info.image_size,
        "train_images": len(train_x.positions),
        "test_images": len(test_x.positions),
        "unreadable_train_images": train_x.unreadable,
        "unreadable_test_images": test_x.unreadable,
        "protocols": protocols,
        "linear_features": "precomputed from centre images (no augmentation)",
    }


def evaluate_encoder(
    checkpoint: str,
    protocols: list[str],
    dataset_name: str | None = None,
    data: str | None = None,
    device: str = "auto",
    baselines: bool = True,
    linear_epochs: int = 30,
    semi_epochs: int = 30,
    seed: int = 0,
    quiet: bool = False,
    run_dir: Path | None = None,
    workers: int | None = None,
    few_label_count: int = FEW_LABEL_SUBSETS,
) -> dict:
    """All requested protocols on the encoder in `checkpoint`, plus random-init and raw-pixel baselines.
    Each split is decoded once, in batches, for every encoder at the same time; only features are kept.
    With "linear", the few-label probe runs on `few_label_count` label subsets per fraction (0: not at all)."""
    started = time.perf_counter()
    with verbosity(quiet):
        device = resolve_device(device)
        encoder, info = read_encoder(checkpoint)
        encoder.to(device)
        dataset_name = dataset_name or info.dataset
        train, test = load_splits(dataset_name, data, info, checkpoint)
        with_baselines = baselines and ("knn" in protocols or "linear" in protocols)
        extractors = _extractors(encoder, info, device, seed, with_baselines)
        workers = decoding_workers(workers)
        log.info(f"eval: features of {len(train)} + {len(test)} images ({', '.join(extractors)})")
        train_x = split_features(train, info.image_size, extractors, workers=workers)
        test_x = split_features(test, info.image_size, extractors, workers=workers)
        report = _header(checkpoint, dataset_name, info, train_x, test_x, protocols)
        if "raw_pixel_" in extractors and info.image_size > RAW_PIXEL_MAX_SIDE:
            report["raw_pixel_size"] = RAW_PIXEL_SIDE
        few_label = _few_label_subsets(protocols, train_x.labels, few_label_count, seed, report)
        for prefix in extractors:
            log.info(f"eval: scoring {'the encoder' if prefix == 'encoder' else prefix.rstrip('_')}")
            scored = "" if prefix == "encoder" else prefix
            _score_features(
                scored, train_x, test_x, train.num_classes, protocols, report, linear_epochs, device, few_label
            )
        if "semi" in protocols:
            _semi_supervised(
                checkpoint, info, train, train_x, test, device, baselines, semi_epochs, seed, report, run_dir, workers
            )
    report["eval_wall_s"] = time.perf_counter() - started
    # for the plots: not written to eval.json
    report.update(_test_features=test_x.features["encoder"], _test_labels=test_x.labels, _classes=train.classes)
    return report


def _semi_supervised(
    checkpoint, info, train, train_x: SplitFeatures, test, device, baselines, epochs, seed, report, run_dir, workers
) -> None:
    """Fine-tunes on seeded class-balanced label subsets; the subsets are saved beside eval.json. Only the
    labelled subset's pixels are held in memory; the test split is decoded a batch at a time."""
    subsets = {}
    for name, fraction in SEMI_FRACTIONS.items():
        index = balanced_subset(train_x.labels, fraction, seed)
        subsets[name] = index.tolist()
        images, labels, _ = dataset_images(train.select(train_x.positions[index]), info.image_size)
        log.info(f"eval: semi-supervised fine-tune on {name} ({len(index)} labels)")
        makers = {"": lambda: read_encoder(checkpoint)[0], "random_init_": lambda: random_encoder(info, seed)}
        for prefix, make in makers.items():
            if prefix and not baselines:
                continue
            result = fine_tune(
                make(),
                info.feature_dim,
                images,
                labels,
                lambda: iterate_split(test, info.image_size, 512, workers),
                train.num_classes,
                info,
                device,
                epochs=epochs,
                seed=seed,
            )
            report[f"{prefix}semi_{name}_top1"] = result["top1"]
            report[f"{prefix}semi_{name}_top5"] = result["top5"]
    if run_dir is not None:
        path = RunDir(run_dir).write_json(RunDir.SEMI_SUBSETS, {"seed": seed, "subsets": subsets})
        report["semi_subsets_file"] = str(path)
    else:
        report["semi_subsets"] = subsets


TABLE_ROWS = (
    ("kNN top-1 (k=200)", "knn_top1"),
    ("kNN top-1 (k=20)", "knn20_top1"),
    ("linear top-1", "linear_top1"),
    ("linear top-5", "linear_top5"),
    ("linear, 1% labels", "few_label_1pct_top1"),
    ("linear, 10% labels", "few_label_10pct_top1"),
    ("semi 1% top-1", "semi_1pct_top1"),
    ("semi 10% top-1", "semi_10pct_top1"),
)


TABLE_COLUMNS = (("BYOL", "", 8), ("random init", "random_init_", 12), ("raw pixels", "raw_pixel_", 11))


def format_table(report: dict) -> str:
    """The protocols' top-1 (and linear top-5) for the encoder and the baselines; a few-label cell is
    "mean ± spread", and a footnote says what the spread is."""
    rows = [
        (label, [_cell(report, prefix + key) for _, prefix, _ in TABLE_COLUMNS])
        for label, key in TABLE_ROWS
        if key in report
    ]
    # At least these widths, wider where a "mean ± spread" cell needs it.
    widths = [max([width] + [len(cells[i]) for _, cells in rows]) for i, (_, _, width) in enumerate(TABLE_COLUMNS)]
    lines = [f"{'protocol':<20} " + " ".join(f"{name:>{w}}" for (name, _, _), w in zip(TABLE_COLUMNS, widths))]
    lines += [f"{label:<20} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths)) for label, cells in rows]
    if "few_label_probe" in report and any(key.startswith("few_label_") and key in report for _, key in TABLE_ROWS):
        lines.append(f"few labels: {report['few_label_probe']}")
    return "\n".join(lines)


def _cell(report: dict, key: str) -> str:
    value, spread = report.get(key), report.get(f"{key}_spread")
    if value is None:
        return "-"
    return f"{value:.2f}" if spread is None else f"{value:.2f} ± {spread:.2f}"


def public(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def write_report(run_dir: Path, report: dict) -> list[Path]:
    """eval.json, the plots and the TensorBoard scalars of an evaluation, in `run_dir`; the files written."""
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    written = [run.write_json(RunDir.EVAL, public(report)), *write_plots(run, report)]
    board = TensorBoard(run.tensorboard)
    board.log({k: v for k, v in public(report).items() if isinstance(v, float)}, prefix="eval/")
    board.close()
    return written


def pyplot():
    # matplotlib costs about 0.7 s to import (measured): only commands that draw pay for it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(run: RunDir, report: dict) -> list[Path]:
    """loss.png and knn.png from metrics.jsonl, embedding.png: a 2-D PCA map of test embeddings by class."""
    plt = pyplot()
    records = run.read_metrics()
    written = []
    for name, key, ylabel in (("loss.png", "loss", "BYOL loss"), ("knn.png", "knn_top1", "kNN top-1 (%)")):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        if key == "knn_top1":
            ax.plot(*zip(*points), marker="o", label="monitor (training-bank / test subsets; epoch 0 = untrained)")
            for field, label, style in (
                ("knn_top1", "full eval: BYOL", "-"),
                ("random_init_knn_top1", "full eval: random init", "--"),
            ):
                if field in report:
                    ax.axhline(report[field], color="grey", linestyle=style, label=label)
            ax.legend(fontsize=8)
        else:
            ax.plot(*zip(*points))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        written.append(_save(plt, fig, run.path / name))
    features = report.get("_test_features")
    if features is not None and len(features) > 2:
        written.append(
            _embedding_map(plt, features, report["_test_labels"], report.get("_classes"), run.path / "embedding.png")
        )
    return written


def _embedding_map(plt, features: torch.Tensor, labels: torch.Tensor, classes, path: Path) -> Path:
    centred = features - features.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    xy = (centred @ v[:, :2]).numpy()
    labels = labels.numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=3, alpha=0.6)
    classes = classes or [str(i) for i in range(int(labels.max()) + 1)]
    handles = scatter.legend_elements()[0]
    ax.legend(handles, classes[: len(handles)], fontsize=7, markerscale=1, loc="best")
    ax.set_title("test embeddings, first two principal components")
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def embed(
    checkpoint: str, data: str, out: str, device: str = "auto", batch_size: int = 256, workers: int | None = None
) -> dict:
    """Features of every image under `data` → .npy (+ .files.txt) or .safetensors (features + file list).
    Decoded in batches by worker processes; only the features are kept. Unreadable files are left out
    and counted."""
    out_path = Path(out)
    if out_path.suffix not in (".npy", ".safetensors"):
        raise UserError(f"--out {out}: use a .npy or .safetensors file name")
    device = resolve_device(device)
    encoder, info = read_encoder(checkpoint)
    encoder.to(device)
    root = Path(data)
    files, _, _ = scan_folder(root)
    folder = ImageDataset(
        "folder", 3, info.image_size, info.mean, info.std, files=files, load_size=info.image_size, root=root
    )
    transform = EvalTransform(info.image_size, info.mean, info.std).to(device)

    def features(images: torch.Tensor) -> torch.Tensor:
        if info.in_channels == 1:  # a grey encoder: the mean of the channels, as its training images were
            images = images.float().mean(1, keepdim=True).round().to(torch.uint8)
        return encode(encoder, images, transform, device)

    result = split_features(folder, info.image_size, {"encoder": features}, batch_size, decoding_workers(workers))
    kept = [str(files[i]) for i in result.positions.tolist()]
    _write_features(out_path, result.features["encoder"], kept)
    return {
        "images": len(kept),
        "skipped": result.unreadable,
        "feature_dim": result.features["encoder"].shape[1],
        "out": str(out_path),
    }


def _write_features(out_path: Path, features: torch.Tensor, names: list[str]) -> None:
    if out_path.suffix == ".npy":

        def write_npy(tmp):
            with open(tmp, "wb") as f:
                np.save(f, features.numpy())

        atomic_write(out_path, write_npy)
        atomic_write(out_path.with_suffix(".files.txt"), lambda tmp: Path(tmp).write_text("\n".join(names) + "\n"))
    else:
        atomic_write(
            out_path,
            lambda tmp: save_file({"features": features.contiguous()}, tmp, metadata={"files": json.dumps(names)}),
        )
