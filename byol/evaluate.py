"""What an encoder is worth: kNN, linear probe, semi-supervised fine-tune, and the baselines beside them.

Protocols (the paper's, scaled down to what a CPU affords; docs/method.md):
- kNN: cosine similarity on L2-normalised features, weighted vote exp(sim / 0.07) over the k nearest
  training images, k = 200 and k = 20; top-1.
- linear: frozen encoder, one linear layer on the pooled representation, SGD Nesterov momentum 0.9
  with cosine decay. Features are precomputed once from the centre (uncropped) images, i.e. no
  training augmentation: the paper's random crop + flip would need a forward pass per epoch, which a
  CPU cannot afford. Features are standardised with the training mean/std; weight decay is picked
  from a small grid on a held-out 10% of the training set, then the probe is retrained on all of it.
- semi: the encoder and a linear head fine-tuned together on a seeded, class-balanced 1% or 10% of
  the labels (crop + flip augmentation), tested on the full test split.
- context: the same protocols on a randomly initialised encoder of the same architecture, and kNN
  and logistic regression on raw pixels.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from .augment import EvalTransform, ViewConfig, crop_and_flip
from .backbones import build_backbone
from .checkpoint import ENCODER_FORMAT, EncoderInfo, TrainingState, load_weights
from .errors import UserError

# ---------------------------------------------------------------- loading an encoder


def load_encoder(path: str | Path) -> tuple[nn.Module, EncoderInfo]:
    """The online encoder from a `checkpoint.pt` or `backbone.safetensors` written by `byol train`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_weights(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != ENCODER_FORMAT:
            raise UserError(f"{path}: no byol encoder metadata (was it written by `byol train` or `byol export`?)")
        info = EncoderInfo.from_metadata(meta)
    else:
        checkpoint = TrainingState.load(path)
        state, info = checkpoint.encoder_weights(), EncoderInfo.from_dict(checkpoint.encoder_info)
    try:
        encoder = build_backbone(info.backbone, info.width, info.image_size, info.in_channels, info.stem, info.norm)
        encoder.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"{path}: weights do not fit a {info.backbone} ({str(error).splitlines()[0]})") from None
    return encoder, info


def random_encoder(info: EncoderInfo, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone(info.backbone, info.width, info.image_size, info.in_channels, info.stem, info.norm)


# ---------------------------------------------------------------- features


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, transform: nn.Module, device: torch.device,
                     batch_size: int = 512, keep_on_device: bool = False) -> torch.Tensor:
    """Pooled representations (N, D) in float32 of uint8 images (N, C, H, W), encoder in eval mode.

    On CUDA each chunk goes up from pinned memory without blocking, and the features stay on the
    device until the end (one copy back, unless `keep_on_device`), so the host never waits per chunk.
    """
    was_training = encoder.training
    encoder.eval()
    weight = next(encoder.parameters())
    channels_last = weight.ndim == 4 and weight.is_contiguous(memory_format=torch.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    chunks = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if device.type == "cuda" and chunk.device.type == "cpu":
            chunk = chunk.pin_memory()
        x = transform(chunk.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
        chunks.append(encoder(x).float())
    encoder.train(was_training)
    features = torch.cat(chunks) if chunks else torch.empty(0, device=device)
    return features if keep_on_device else features.cpu()


def pixel_features(images: torch.Tensor, mean, std) -> torch.Tensor:
    x = images.float() / 255
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x.flatten(1)


# ---------------------------------------------------------------- kNN


@torch.no_grad()
def knn_predict_many(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                     ks: tuple[int, ...], num_classes: int, temperature: float = 0.07,
                     chunk: int = 1024, device: torch.device | None = None) -> dict[int, torch.Tensor]:
    """Class scores (N_test, classes) on the CPU for each k from one similarity pass: the k nearest are a
    prefix of the largest k's sorted neighbours, so k=20 beside k=200 costs no second matmul over the bank.

    Similarities, top-k and votes are computed on `device` (default: where the bank is), `chunk` test
    images at a time, so memory holds chunk × bank similarities, never test × bank."""
    device = device or train_features.device
    bank = F.normalize(train_features.to(device).float(), dim=1)
    bank_labels = train_labels.to(device)
    widest = min(max(ks), len(bank))
    scores = {k: [] for k in ks}
    for start in range(0, len(test_features), chunk):
        query = F.normalize(test_features[start:start + chunk].to(device).float(), dim=1)
        similarity, index = (query @ bank.T).topk(widest, dim=1)
        weights = (similarity / temperature).exp()
        neighbour_labels = bank_labels[index]
        for k in ks:
            votes = torch.zeros(len(query), num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            scores[k].append(votes)
    return {k: torch.cat(parts).cpu() for k, parts in scores.items()}


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, k: int,
                num_classes: int, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores (N_test, classes) from a cosine-similarity kNN with exp(sim/T) weighted votes."""
    return knn_predict_many(train_features, train_labels, test_features, (k,), num_classes, temperature, chunk)[k]


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    k = min(k, scores.shape[1])
    hits = (scores.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)
    return 100.0 * hits.float().mean().item()


def knn_accuracies(train_features, train_labels, test_features, test_labels, num_classes, ks=(200, 20),
                   temperature=0.07, device: torch.device | None = None) -> dict[int, float]:
    """Top-1 for each k in `ks`, from one pass over the bank."""
    scores = knn_predict_many(train_features, train_labels, test_features, tuple(ks), num_classes, temperature,
                              device=device)
    return {k: top_k_accuracy(s, test_labels.cpu()) for k, s in scores.items()}


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes, k=200,
                 temperature=0.07, device: torch.device | None = None) -> float:
    return knn_accuracies(train_features, train_labels, test_features, test_labels, num_classes, (k,), temperature,
                          device)[k]


# ---------------------------------------------------------------- linear probe on features


def _fit_linear(features, labels, num_classes, weight_decays, epochs, batch_size, lr, seed) -> list[nn.Linear]:
    """One linear head per weight decay, trained side by side on the same batches from the same start.

    Each head's gradient comes from its own loss term only, so every head ends exactly as it would
    trained alone; sharing the batch gathering and the optimizer step costs about one fit, not one per
    weight decay (the probes were most of `byol eval`'s time)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    first = nn.Linear(features.shape[1], num_classes).to(features.device)  # drawn on the CPU on every device
    heads = [first] + [copy.deepcopy(first) for _ in weight_decays[1:]]
    groups = [{"params": head.parameters(), "weight_decay": wd} for head, wd in zip(heads, weight_decays)]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(features) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for start in range(0, len(features), batch_size):
            index = order[start:start + batch_size]
            x, y = features[index], labels[index]
            loss = sum(F.cross_entropy(head(x), y) for head in heads)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return heads


def linear_probe(train_features, train_labels, test_features, test_labels, num_classes, epochs: int = 30,
                 batch_size: int = 1024, lr: float = 0.1, weight_decays=(0.0, 1e-4, 1e-3),
                 seed: int = 0, device: torch.device | None = None) -> dict:
    """Top-1/top-5 of a linear classifier on frozen features; weight decay chosen on held-out train data.
    Trained on `device` (default: where the features are); the batch order is drawn on the CPU, so it is
    the same on every device."""
    device = device or train_features.device
    train_features, train_labels = train_features.to(device), train_labels.to(device)
    test_features, test_labels = test_features.to(device), test_labels.to(device)
    mean = train_features.mean(0, keepdim=True)
    std = train_features.std(0, keepdim=True).clamp_min(1e-6)
    train_x = (train_features - mean) / std
    test_x = (test_features - mean) / std
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_x), generator=generator).to(device)
    held_out = max(len(train_x) // 10, 1)
    val_index, fit_index = order[:held_out], order[held_out:]
    best = weight_decays[0]
    if len(weight_decays) > 1:
        heads = _fit_linear(train_x[fit_index], train_labels[fit_index], num_classes, list(weight_decays), epochs,
                            batch_size, lr, seed)
        with torch.no_grad():
            accuracies = [top_k_accuracy(head(train_x[val_index]), train_labels[val_index]) for head in heads]
        best = weight_decays[accuracies.index(max(accuracies))]  # the first of equals, as before
    head, = _fit_linear(train_x, train_labels, num_classes, [best], epochs, batch_size, lr, seed)
    with torch.no_grad():
        scores = head(test_x)
    return {"top1": top_k_accuracy(scores, test_labels, 1), "top5": top_k_accuracy(scores, test_labels, 5),
            "weight_decay": best}


# ---------------------------------------------------------------- semi-supervised fine-tune


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a seeded, class-balanced `fraction` of the labelled images (≥ 1 per class)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    classes = torch.unique(labels)
    per_class = max(round(fraction * len(labels) / len(classes)), 1)
    for c in classes.tolist():
        members = (labels == c).nonzero().squeeze(1)
        pick = members[torch.randperm(len(members), generator=generator)[:per_class]]
        chosen.append(pick)
    return torch.cat(chosen).sort().values


def fine_tune(encoder: nn.Module, feature_dim: int, images: torch.Tensor, labels: torch.Tensor,
              test_images: torch.Tensor, test_labels: torch.Tensor, num_classes: int, info: EncoderInfo,
              device: torch.device, epochs: int = 30, batch_size: int = 256, lr: float = 0.05, seed: int = 0) -> dict:
    """Fine-tune encoder + linear head with crop + flip (SGD Nesterov, cosine); top-1/top-5 on the test split."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(encoder, nn.Linear(feature_dim, num_classes)).to(device)
    normalise = EvalTransform(info.image_size, info.mean, info.std).to(device)
    crop = ViewConfig(crop_scale=(0.5, 1.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    batch_size = min(batch_size, len(images))
    steps = epochs * max(len(images) // batch_size, 1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            x = images[index].to(device).float() / 255
            x, _ = crop_and_flip(x, info.image_size, crop)
            x = (x - normalise.mean) / normalise.std
            loss = F.cross_entropy(model(x), labels[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(normalise(test_images[s:s + 512].to(device))).float().cpu()
                            for s in range(0, len(test_images), 512)])
    return {"top1": top_k_accuracy(scores, test_labels, 1), "top5": top_k_accuracy(scores, test_labels, 5)}
