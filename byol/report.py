"""`byol eval`, `byol embed`, `byol export`: run the protocols of evaluate.py and write what they found."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from .augment import EvalTransform
from .data import dataset_images, load_dataset
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

PROTOCOLS = ("knn", "linear", "semi")
SEMI_FRACTIONS = {"1pct": 0.01, "10pct": 0.10}


def parse_protocols(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown or not names:
        raise UserError(f"--protocol: unknown protocol {', '.join(unknown) or '(none)'}; choose from {', '.join(PROTOCOLS)}")
    return names


def _score_features(prefix: str, train_x, train_y, test_x, test_y, num_classes, protocols, report, linear_epochs):
    if "knn" in protocols:
        accuracy = knn_accuracies(train_x, train_y, test_x, test_y, num_classes, ks=(200, 20))
        report[f"{prefix}knn_top1"], report[f"{prefix}knn20_top1"] = accuracy[200], accuracy[20]
    if "linear" in protocols:
        result = linear_probe(train_x, train_y, test_x, test_y, num_classes, epochs=linear_epochs)
        report[f"{prefix}linear_top1"] = result["top1"]
        report[f"{prefix}linear_top5"] = result["top5"]
        report[f"{prefix}linear_weight_decay"] = result["weight_decay"]


def evaluate_encoder(checkpoint: str, protocols: list[str], dataset_name: str | None = None, data: str | None = None,
                     device: str = "auto", baselines: bool = True, linear_epochs: int = 30, semi_epochs: int = 30,
                     seed: int = 0, quiet: bool = False, run_dir: Path | None = None) -> dict:
    """All requested protocols on the encoder in `checkpoint`, plus random-init and raw-pixel baselines."""
    from .train import resolve_device

    def say(message):
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    device = resolve_device(device)
    encoder, info = load_encoder(checkpoint)
    encoder.to(device)
    dataset_name = dataset_name or info.dataset
    train = load_dataset(dataset_name, data, "train", load_size=info.image_size)
    test = load_dataset(dataset_name, data, "test", load_size=info.image_size)
    if train.labels is None or test.labels is None:
        raise UserError(f"{dataset_name}: evaluation needs labels (sub-folders per class for --dataset folder)")
    if train.channels != info.in_channels:
        raise UserError(f"{checkpoint}: encoder expects {info.in_channels}-channel images, {dataset_name} has "
                        f"{train.channels}")
    num_classes = train.num_classes
    train_images, train_labels, train_unreadable = dataset_images(train, info.image_size)
    test_images, test_labels, test_unreadable = dataset_images(test, info.image_size)
    transform = EvalTransform(info.image_size, info.mean, info.std).to(device)
    report = {"checkpoint": str(checkpoint), "dataset": dataset_name, "backbone": info.backbone, "width": info.width,
              "image_size": info.image_size, "train_images": len(train_images), "test_images": len(test_images),
              "unreadable_train_images": train_unreadable, "unreadable_test_images": test_unreadable,
              "protocols": protocols, "linear_features": "precomputed from centre images (no augmentation)"}

    say(f"eval: features of {len(train_images)} + {len(test_images)} images")
    train_x = extract_features(encoder, train_images, transform, device)
    test_x = extract_features(encoder, test_images, transform, device)
    _score_features("", train_x, train_labels, test_x, test_labels, num_classes, protocols, report, linear_epochs)

    if baselines and ("knn" in protocols or "linear" in protocols):
        say("eval: random-init encoder baseline")
        rand = random_encoder(info, seed).to(device)
        _score_features("random_init_", extract_features(rand, train_images, transform, device), train_labels,
                        extract_features(rand, test_images, transform, device), test_labels, num_classes, protocols,
                        report, linear_epochs)
        say("eval: raw-pixel baseline")
        _score_features("raw_pixel_", pixel_features(train_images, info.mean, info.std), train_labels,
                        pixel_features(test_images, info.mean, info.std), test_labels, num_classes, protocols, report,
                        linear_epochs)

    if "semi" in protocols:
        subsets = {}
        for name, fraction in SEMI_FRACTIONS.items():
            index = balanced_subset(train_labels, fraction, seed)
            subsets[name] = index.tolist()
            say(f"eval: semi-supervised fine-tune on {name} ({len(index)} labels)")
            for prefix, make in (("", lambda: load_encoder(checkpoint)[0]), ("random_init_", lambda: random_encoder(info, seed))):
                if prefix and not baselines:
                    continue
                result = fine_tune(make(), info.feature_dim, train_images[index], train_labels[index], test_images,
                                   test_labels, num_classes, info, device, epochs=semi_epochs, seed=seed)
                report[f"{prefix}semi_{name}_top1"] = result["top1"]
                report[f"{prefix}semi_{name}_top5"] = result["top5"]
        if run_dir is not None:
            (run_dir / "semi_subsets.json").write_text(json.dumps({"seed": seed, "subsets": subsets}) + "\n")
            report["semi_subsets_file"] = str(run_dir / "semi_subsets.json")
        else:
            report["semi_subsets"] = subsets
    report["eval_wall_s"] = time.perf_counter() - started
    report["_test_features"] = test_x
    report["_test_labels"] = test_labels
    report["_classes"] = test.classes
    return report


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


def write_plots(run_dir: Path, report: dict) -> list[Path]:
    """loss.png and knn.png from metrics.jsonl, embedding.png: a 2-D PCA map of test embeddings by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    metrics_path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
        if metrics_path.exists() else []
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
        fig.tight_layout()
        fig.savefig(run_dir / name, dpi=100)
        plt.close(fig)
        written.append(run_dir / name)
    features = report.get("_test_features")
    if features is not None and len(features) > 2:
        centred = features - features.mean(0, keepdim=True)
        _, _, v = torch.pca_lowrank(centred, q=2, center=False)
        xy = (centred @ v[:, :2]).numpy()
        labels = report["_test_labels"].numpy()
        fig, ax = plt.subplots(figsize=(7, 6))
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=3, alpha=0.6)
        classes = report.get("_classes") or [str(i) for i in range(int(labels.max()) + 1)]
        handles = scatter.legend_elements()[0]
        ax.legend(handles, classes[:len(handles)], fontsize=7, markerscale=1, loc="best")
        ax.set_title("test embeddings, first two principal components")
        fig.tight_layout()
        fig.savefig(run_dir / "embedding.png", dpi=100)
        plt.close(fig)
        written.append(run_dir / "embedding.png")
    return written


def log_to_tensorboard(run_dir: Path, report: dict) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    for key, value in public(report).items():
        if isinstance(value, float):
            writer.add_scalar(f"eval/{key}", value, 0)
    writer.close()


def embed(checkpoint: str, data: str, out: str, device: str = "auto", batch_size: int = 256) -> dict:
    """Features of every image under `data` → .npy (+ .files.txt) or .safetensors (features + file list)."""
    from .checkpoint import atomic_write
    from .data import scan_folder, try_decode
    from .train import resolve_device

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
    features = torch.cat(chunks)
    names = [str(p) for p in kept]
    if out_path.suffix == ".npy":
        import numpy as np

        def write_npy(tmp):
            with open(tmp, "wb") as f:
                np.save(f, features.numpy())

        atomic_write(out_path, write_npy)
        atomic_write(out_path.with_suffix(".files.txt"), lambda tmp: Path(tmp).write_text("\n".join(names) + "\n"))
    else:
        from safetensors.torch import save_file

        atomic_write(out_path, lambda tmp: save_file({"features": features.contiguous()}, tmp,
                                                     metadata={"files": json.dumps(names)}))
    return {"images": len(kept), "skipped": len(skipped), "feature_dim": features.shape[1], "out": str(out_path)}


def export(checkpoint: str, out: str) -> dict:
    """The online encoder of a training checkpoint as safetensors, with the metadata to rebuild it."""
    from .checkpoint import save_weights

    encoder, info = load_encoder(checkpoint)
    save_weights(Path(out), encoder.state_dict(), info.to_metadata())
    return {"out": out, "backbone": info.backbone, "feature_dim": info.feature_dim}
