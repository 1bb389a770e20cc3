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
- few labels: a logistic-regression head on the frozen, standardised features of a seeded,
  class-balanced 1% or 10% of the labels, three subsets each, mean and max − min of test top-1. The
  paper fine-tunes the whole encoder on fixed 1%/10% subsets (`semi` here); this probe only fits a
  linear head, so it costs seconds and reuses the kNN/linear features.
- context: the same protocols on a randomly initialised encoder of the same architecture, and kNN
  and logistic regression on raw pixels.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from byol.data.augment import EvalTransform, ViewConfig, crop_and_flip
from byol.models.backbones import build_backbone
from byol.runtime.checkpoint import EncoderInfo

# ---------------------------------------------------------------- baselines


def random_encoder(info: EncoderInfo, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone(info.backbone, info.width, info.image_size, info.in_channels, info.stem, info.norm)


# ---------------------------------------------------------------- kNN


BANK_CHUNK_BYTES = 256 * 2**20  # bank rows normalised and compared at a time: this much, not the whole bank


@torch.no_grad()
def knn_predict_many(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    ks: tuple[int, ...],
    num_classes: int,
    temperature: float = 0.07,
    chunk: int = 1024,
    device: torch.device | None = None,
) -> dict[int, torch.Tensor]:
    """Class scores (N_test, classes) on the CPU for each k from one similarity pass: the k nearest are a
    prefix of the largest k's sorted neighbours, so k=20 beside k=200 costs no second matmul over the bank.

    Computed on `device` (default: where the bank is), `chunk` test images against BANK_CHUNK_BYTES of
    bank rows at a time, keeping the running k nearest: memory holds one bank chunk and its similarities,
    never test × bank, and the bank is never copied whole (it may be memory-mapped)."""
    device = device or train_features.device
    bank_labels = train_labels.to(device)
    widest = min(max(ks), len(train_features))
    # A bank that fits one chunk is normalised once; a larger one chunk by chunk for every test chunk.
    rows = max(1, BANK_CHUNK_BYTES // (4 * train_features.shape[1]))
    small = len(train_features) <= rows
    normalised = [(0, F.normalize(train_features.to(device).float(), dim=1))] if small else None
    scores = {k: [] for k in ks}
    for start in range(0, len(test_features), chunk):
        query = F.normalize(test_features[start : start + chunk].to(device).float(), dim=1)
        similarity, index = _nearest(query, normalised or _bank_chunks(train_features, rows, device), widest)
        weights = (similarity / temperature).exp()
        neighbour_labels = bank_labels[index]
        for k in ks:
            votes = torch.zeros(len(query), num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            scores[k].append(votes)
    return {k: torch.cat(parts).cpu() for k, parts in scores.items()}


def _bank_chunks(bank: torch.Tensor, rows: int, device: torch.device):
    for start in range(0, len(bank), rows):
        yield start, F.normalize(bank[start : start + rows].to(device).float(), dim=1)


def _nearest(query: torch.Tensor, chunks, k: int):
    """(similarities, bank rows) of the k most similar bank rows to each query, sorted; `chunks` yields
    (first row, normalised rows) and only the running k best are kept between them."""
    best_similarity = best_index = None
    for start, part in chunks:
        similarity, index = (query @ part.T).topk(min(k, len(part)), dim=1)
        if best_similarity is not None:
            similarity = torch.cat([best_similarity, similarity], dim=1)
            index = torch.cat([best_index, index + start], dim=1)
            similarity, order = similarity.topk(min(k, similarity.shape[1]), dim=1)
            index = index.gather(1, order)
        best_similarity, best_index = similarity, index
    return best_similarity, best_index


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int,
    num_classes: int,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (N_test, classes) from a cosine-similarity kNN with exp(sim/T) weighted votes."""
    return knn_predict_many(train_features, train_labels, test_features, (k,), num_classes, temperature, chunk)[k]


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    k = min(k, scores.shape[1])
    hits = (scores.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)
    return 100.0 * hits.float().mean().item()


def knn_accuracies(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes,
    ks=(200, 20),
    temperature=0.07,
    device: torch.device | None = None,
) -> dict[int, float]:
    """Top-1 for each k in `ks`, from one pass over the bank."""
    scores = knn_predict_many(
        train_features, train_labels, test_features, tuple(ks), num_classes, temperature, device=device
    )
    return {k: top_k_accuracy(s, test_labels.cpu()) for k, s in scores.items()}


def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes,
    k=200,
    temperature=0.07,
    device: torch.device | None = None,
) -> float:
    return knn_accuracies(
        train_features, train_labels, test_features, test_labels, num_classes, (k,), temperature, device
    )[k]


# ---------------------------------------------------------------- linear probe on features


DEVICE_COPY_BYTES = 2 * 2**30  # features up to this size go to the device whole; larger ones a batch at a time
SCORE_CHUNK = 65536


def _standardised(features: torch.Tensor, rows: torch.Tensor | slice, mean: torch.Tensor, std: torch.Tensor):
    return (features[rows].to(mean.device) - mean) / std


def _fit_linear(
    features, labels, rows, mean, std, num_classes, weight_decays, epochs, batch_size, lr, seed
) -> list[nn.Linear]:
    """One linear head per weight decay, trained side by side on the same batches from the same start,
    on the standardised `features[rows]` (standardised a batch at a time, never copied whole).

    Each head's gradient comes from its own loss term only, so every head ends exactly as it would
    trained alone; sharing the batch gathering and the optimizer step costs about one fit, not one per
    weight decay (the probes were most of `byol eval`'s time)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    first = nn.Linear(features.shape[1], num_classes).to(mean.device)  # drawn on the CPU on every device
    heads = [first] + [copy.deepcopy(first) for _ in weight_decays[1:]]
    groups = [{"params": head.parameters(), "weight_decay": wd} for head, wd in zip(heads, weight_decays)]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = rows[torch.randperm(len(rows), generator=generator).to(rows.device)]
        for start in range(0, len(rows), batch_size):
            index = order[start : start + batch_size]
            x, y = _standardised(features, index, mean, std), labels[index]
            loss = sum(F.cross_entropy(head(x), y) for head in heads)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return heads


@torch.no_grad()
def _scores(head: nn.Linear, features, rows, mean, std) -> torch.Tensor:
    count = len(rows) if isinstance(rows, torch.Tensor) else len(features)
    rows = rows if isinstance(rows, torch.Tensor) else torch.arange(count, device=features.device)
    return torch.cat(
        [head(_standardised(features, rows[s : s + SCORE_CHUNK], mean, std)) for s in range(0, count, SCORE_CHUNK)]
    )


def _chosen_weight_decay(train_features, train_labels, weight_decays: list[float], fit: tuple) -> float:
    """The weight decay whose head, fitted on 90% of the training rows, scores best on the other 10%."""
    if len(weight_decays) == 1:
        return weight_decays[0]
    mean, std, num_classes, epochs, batch_size, lr, seed = fit
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_features), generator=generator).to(train_features.device)
    held_out = max(len(train_features) // 10, 1)
    val_rows, fit_rows = order[:held_out], order[held_out:]
    heads = _fit_linear(
        train_features, train_labels, fit_rows, mean, std, num_classes, weight_decays, epochs, batch_size, lr, seed
    )
    accuracies = [
        top_k_accuracy(_scores(head, train_features, val_rows, mean, std), train_labels[val_rows.to(std.device)])
        for head in heads
    ]
    return weight_decays[accuracies.index(max(accuracies))]  # the first of equals, as before


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes,
    epochs: int = 30,
    batch_size: int = 1024,
    lr: float = 0.1,
    weight_decays=(0.0, 1e-4, 1e-3),
    seed: int = 0,
    device: torch.device | None = None,
) -> dict:
    """Top-1/top-5 of a linear classifier on frozen features; weight decay chosen on held-out train data.

    Trained on `device` (default: where the features are). Features standardised with the training
    mean and std a batch at a time, so a large (memory-mapped) matrix is never copied; up to
    DEVICE_COPY_BYTES they are moved to the device whole. The batch order is drawn on the CPU, the same
    on every device."""
    device = device or train_features.device
    if train_features.numel() * 4 <= DEVICE_COPY_BYTES:
        train_features, test_features = train_features.to(device), test_features.to(device)
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    mean = train_features.mean(0, keepdim=True).to(device)
    std = train_features.std(0, keepdim=True).clamp_min(1e-6).to(device)
    fit = (mean, std, num_classes, epochs, batch_size, lr, seed)
    best = _chosen_weight_decay(train_features, train_labels, list(weight_decays), fit)
    every_row = torch.arange(len(train_features), device=train_features.device)
    (head,) = _fit_linear(train_features, train_labels, every_row, mean, std, num_classes, [best], *fit[3:])
    scores = _scores(head, test_features, None, mean, std)
    return {
        "top1": top_k_accuracy(scores, test_labels, 1),
        "top5": top_k_accuracy(scores, test_labels, 5),
        "weight_decay": best,
    }


# ---------------------------------------------------------------- few-label probe on features


FEW_LABEL_SUBSETS = 3  # label subsets per fraction: the ± beside each few-label figure is their max − min
# L2 on the mean loss is this / n: a fixed prior (scikit-learn's C = 0.1), so 1% and 10% are regularised alike.
FEW_LABEL_L2 = 10.0
# On Fashion-MNIST (raw pixels, random-init features) top-1 after 100 iterations was within 0.1 of after 300.
FEW_LABEL_ITERATIONS = 100


def few_label_subsets(
    labels: torch.Tensor, fraction: float, count: int = FEW_LABEL_SUBSETS, seed: int = 0
) -> list[torch.Tensor]:
    """`count` seeded class-balanced subsets (`balanced_subset`), each from its own seed drawn from `seed` by a
    private generator, so the global RNG is untouched. Every fraction gets the same seeds, so subset i of 1%
    lies inside subset i of 10%."""
    generator = torch.Generator().manual_seed(seed)
    seeds = torch.randint(2**62, (count,), generator=generator).tolist()
    with _one_cpu_thread():
        return [balanced_subset(labels, fraction, s) for s in seeds]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, iterations: int) -> nn.Linear:
    """Multinomial logistic regression, loss mean cross-entropy + l2/2 · |W|², by full-batch L-BFGS from zero.

    Nothing random: no draw from any RNG, so running it changes no other protocol's figures."""
    xt = x.T.contiguous()  # logits as W @ xᵀ: measured ~3× faster on the CPU than x @ Wᵀ for 10 classes
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy((weight @ xt).T + bias, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    head = nn.utils.skip_init(nn.Linear, x.shape[1], num_classes, device=x.device)  # skip_init: no RNG draw
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head


def few_label_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    subsets: list[torch.Tensor],
    l2: float = FEW_LABEL_L2,
    iterations: int = FEW_LABEL_ITERATIONS,
    device: torch.device | None = None,
) -> list[float]:
    """Test top-1 of a logistic head fitted on each subset of the training rows (`fit_logistic`, L2 `l2` / n).

    Features are standardised with the subset's own mean/std, as a user holding only those labels would.
    Unlike the paper's semi-supervised protocol the encoder stays frozen and only a linear head is fitted;
    the test split is scored SCORE_CHUNK rows at a time, so a memory-mapped matrix is never copied whole."""
    device = device or train_features.device
    test_labels = test_labels.to(device)
    accuracies = []
    with _one_cpu_thread():
        for rows in subsets:
            x = train_features[rows].to(device).float()
            mean, std = x.mean(0, keepdim=True), x.std(0, correction=0, keepdim=True).clamp_min(1e-6)
            y = train_labels[rows].to(device)
            head = fit_logistic((x - mean) / std, y, num_classes, l2 / len(rows), iterations)
            accuracies.append(top_k_accuracy(_scores(head, test_features, None, mean, std), test_labels))
    return accuracies


@contextlib.contextmanager
def _one_cpu_thread():
    """L-BFGS on a few thousand rows, like drawing the subsets, is thousands of tiny ops, where CPU threads only
    add synchronisation: measured on 2 busy cores, 3 fits of 600 × 128 took 0.9 s on one thread and 19 s on two
    (drawing 6 subsets of 60,000 labels: 0.03 s and 1-3 s). One thread also makes the figures the same whatever
    the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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


def fine_tune(
    encoder: nn.Module,
    feature_dim: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_batches,
    num_classes: int,
    info: EncoderInfo,
    device: torch.device,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 0.05,
    seed: int = 0,
) -> dict:
    """Fine-tune encoder + linear head with crop + flip (SGD Nesterov, cosine); top-1/top-5 on the test split,
    which `test_batches()` yields as (uint8 images, labels, ...) batches."""
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
            index = order[start : start + batch_size]
            x = images[index].to(device).float() / 255
            x, _ = crop_and_flip(x, info.image_size, crop)
            x = (x - normalise.mean) / normalise.std
            loss = F.cross_entropy(model(x), labels[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    scores, test_labels = [], []
    with torch.no_grad():
        for test_images, batch_labels, *_ in test_batches():
            scores.append(model(normalise(test_images.to(device))).float().cpu())
            test_labels.append(batch_labels)
    scores, test_labels = torch.cat(scores), torch.cat(test_labels)
    return {"top1": top_k_accuracy(scores, test_labels, 1), "top5": top_k_accuracy(scores, test_labels, 5)}
