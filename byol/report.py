"""`byol eval`, `byol embed`, `byol export`: run the protocols of evaluate.py and write what they found."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .augment import EvalTransform
from .checkpoint import EncoderInfo, atomic_write, save_weights
from .data import dataset_images, load_dataset, scan_folder, try_decode
from .device import resolve_device
from .errors import UserError
from .evaluate import (
    balanced_subset,
    extract_features,
    fine_tune,
    knn_accuracies,
    linear_probe,
    load_encoder,
    pixel_features,
    random_encoder,
)
from .logs import TensorBoard, log, verbosity
from .run_dir import RunDir

PROTOCOLS = ("knn", "linear", "semi")
SEMI_FRACTIONS = {"1pct": 0.01, "10pct": 0.10}


def parse_protocols(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown or not names:
        raise UserError(f"--protocol: unknown protocol {', '.join(unknown) or '(none)'}; choose from {', '.join(PROTOCOLS)}")
    return names


@dataclass
class LabelledSplits:
    """The decodable images and labels of a dataset's train and test splits, at the encoder's size."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    classes: list[str] | None
    unreadable: tuple[int, int]  # (train, test) files left out

    @classmethod
    def load(cls, dataset_name: str, data: str | None, info: EncoderInfo, checkpoint: str) -> LabelledSplits:
        train = load_dataset(dataset_name, data, "train", load_size=info.image_size)
        test = load_dataset(dataset_name, data, "test", load_size=info.image_size)
        if train.labels is None or test.labels is None:
            raise UserError(f"{dataset_name}: evaluation needs labels (sub-folders per class for --dataset folder)")
        if train.channels != info.in_channels:
            raise UserError(f"{checkpoint}: encoder expects {info.in_channels}-channel images, {dataset_name} has "
                            f"{train.channels}")
        train_images, train_labels, train_unreadable = dataset_images(train, info.image_size)
        test_images, test_labels, test_unreadable = dataset_images(test, info.image_size)
        return cls(train_images, train_labels, test_images, test_labels, train.num_classes, test.classes,
                   (train_unreadable, test_unreadable))


def _score_features(prefix: str, train_x, test_x, splits: LabelledSplits, protocols, report, linear_epochs,
                    device: torch.device) -> None:
    if "knn" in protocols:
        accuracy = knn_accuracies(train_x, splits.train_labels, test_x, splits.test_labels, splits.num_classes,
                                  ks=(200, 20), device=device)
        report[f"{prefix}knn_top1"], report[f"{prefix}knn20_top1"] = accuracy[200], accuracy[20]
    if "linear" in protocols:
        result = linear_probe(train_x, splits.train_labels, test_x, splits.test_labels, splits.num_classes,
                              epochs=linear_epochs, device=device)
        report[f"{prefix}linear_top1"] = result["top1"]
        report[f"{prefix}linear_top5"] = result["top5"]
        report[f"{prefix}linear_weight_decay"] = result["weight_decay"]


def evaluate_encoder(checkpoint: str, protocols: list[str], dataset_name: str | None = None, data: str | None = None,
                     device: str = "auto", baselines: bool = True, linear_epochs: int = 30, semi_epochs: int = 30,
                     seed: int = 0, quiet: bool = False, run_dir: Path | None = None) -> dict:
    """All requested protocols on the encoder in `checkpoint`, plus random-init and raw-pixel baselines."""
    started = time.perf_counter()
    with verbosity(quiet):
        device = resolve_device(device)
        encoder, info = load_encoder(checkpoint)
        encoder.to(device)
        dataset_name = dataset_name or info.dataset
        splits = LabelledSplits.load(dataset_name, data, info, checkpoint)
        transform = EvalTransform(info.image_size, info.mean, info.std).to(device)
        report = {"checkpoint": str(checkpoint), "dataset": dataset_name, "backbone": info.backbone,
                  "width": info.width, "image_size": info.image_size, "train_images": len(splits.train_images),
                  "test_images": len(splits.test_images), "unreadable_train_images": splits.unreadable[0],
                  "unreadable_test_images": splits.unreadable[1], "protocols": protocols,
                  "linear_features": "precomputed from centre images (no augmentation)"}

        log.info(f"eval: features of {len(splits.train_images)} + {len(splits.test_images)} images")
        train_x = extract_features(encoder, splits.train_images, transform, device)
        test_x = extract_features(encoder, splits.test_images, transform, device)
        _score_features("", train_x, test_x, splits, protocols, report, linear_epochs, device)
        if baselines and ("knn" in protocols or "linear" in protocols):
            _score_baselines(info, splits, transform, device, protocols, report, linear_epochs, seed)
        if "semi" in protocols:
            _semi_supervised(checkpoint, info, splits, device, baselines, semi_epochs, seed, report, run_dir)
    report["eval_wall_s"] = time.perf_counter() - started
    report["_test_features"] = test_x
    report["_test_labels"] = splits.test_labels
    report["_classes"] = splits.classes
    return report


def _score_baselines(info, splits: LabelledSplits, transform, device, protocols, report, linear_epochs, seed) -> None:
    """The context every figure needs: a random-init encoder of the same architecture, and raw pixels."""
    log.info("eval: random-init encoder baseline")
    rand = random_encoder(info, seed).to(device)
    _score_features("random_init_", extract_features(rand, splits.train_images, transform, device),
                    extract_features(rand, splits.test_images, transform, device), splits, protocols, report,
                    linear_epochs, device)
    log.info("eval: raw-pixel baseline")
    _score_features("raw_pixel_", pixel_features(splits.train_images, info.mean, info.std),
                    pixel_features(splits.test_images, info.mean, info.std), splits, protocols, report, linear_epochs,
                    device)


def _semi_supervised(checkpoint, info, splits: LabelledSplits, device, baselines, epochs, seed, report,
                     run_dir) -> None:
    """Fine-tunes on seeded class-balanced label subsets; the subsets are saved beside eval.json."""
    subsets = {}
    for name, fraction in SEMI_FRACTIONS.items():
        index = balanced_subset(splits.train_labels, fraction, seed)
        subsets[name] = index.tolist()
        log.info(f"eval: semi-supervised fine-tune on {name} ({len(index)} labels)")
        makers = {"": lambda: load_encoder(checkpoint)[0], "random_init_": lambda: random_encoder(info, seed)}
        for prefix, make in makers.items():
            if prefix and not baselines:
                continue
            result = fine_tune(make(), info.feature_dim, splits.train_images[index], splits.train_labels[index],
                               splits.test_images, splits.test_labels, splits.num_classes, info, device,
                               epochs=epochs, seed=seed)
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
    ("semi 1% top-1", "semi_1pct_top1"),
    ("semi 10% top-1", "semi_10pct_top1"),
)


def format_table(report: dict) -> str:
    lines = [f"{'protocol':<20} {'BYOL':>8} {'random init':>12} {'raw pixels':>11}"]
    for label, key in TABLE_ROWS:
        if key not in report:
            continue
        cells = [report.get(prefix + key) for prefix in ("", "random_init_", "raw_pixel_")]
        lines.append(f"{label:<20} " + " ".join(f"{('%.2f' % c) if c is not None else '-':>{w}}"
                                                for c, w in zip(cells, (8, 12, 11))))
    return "\n".join(lines)


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
            for field, label, style in (("knn_top1", "full eval: BYOL", "-"),
                                        ("random_init_knn_top1", "full eval: random init", "--")):
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
        written.append(_embedding_map(plt, features, report["_test_labels"], report.get("_classes"),
                                      run.path / "embedding.png"))
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
    ax.legend(handles, classes[:len(handles)], fontsize=7, markerscale=1, loc="best")
    ax.set_title("test embeddings, first two principal components")
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def embed(checkpoint: str, data: str, out: str, device: str = "auto", batch_size: int = 256) -> dict:
    """Features of every image under `data` → .npy (+ .files.txt) or .safetensors (features + file list)."""
    out_path = Path(out)
    if out_path.suffix not in (".npy", ".safetensors"):
        raise UserError(f"--out {out}: use a .npy or .safetensors file name")
    device = resolve_device(device)
    encoder, info = load_encoder(checkpoint)
    encoder.to(device)
    files, _, _ = scan_folder(Path(data))
    transform = EvalTransform(info.image_size, info.mean, info.std).to(device)
    kept, skipped, chunks = [], [], []
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start:start + batch_size]:
            image = try_decode(path, info.image_size)
            if image is None:
                skipped.append(path)
                continue
            if info.in_channels == 1:
                image = (image.float().mean(0, keepdim=True)).round().to(torch.uint8)
            batch.append(image)
            kept.append(path)
        if batch:
            chunks.append(extract_features(encoder, torch.stack(batch), transform, device))
    if not kept:
        raise UserError(f"{data}: none of the {len(files)} image files could be decoded")
    _write_features(out_path, torch.cat(chunks), [str(p) for p in kept])
    return {"images": len(kept), "skipped": len(skipped), "feature_dim": chunks[0].shape[1], "out": str(out_path)}


def _write_features(out_path: Path, features: torch.Tensor, names: list[str]) -> None:
    if out_path.suffix == ".npy":
        def write_npy(tmp):
            with open(tmp, "wb") as f:
                np.save(f, features.numpy())

        atomic_write(out_path, write_npy)
        atomic_write(out_path.with_suffix(".files.txt"), lambda tmp: Path(tmp).write_text("\n".join(names) + "\n"))
    else:
        atomic_write(out_path, lambda tmp: save_file({"features": features.contiguous()}, tmp,
                                                     metadata={"files": json.dumps(names)}))


def export(checkpoint: str, out: str) -> dict:
    """The online encoder of a training checkpoint as safetensors, with the metadata to rebuild it."""
    encoder, info = load_encoder(checkpoint)
    save_weights(Path(out), encoder.state_dict(), info.to_metadata())
    return {"out": out, "backbone": info.backbone, "feature_dim": info.feature_dim}
