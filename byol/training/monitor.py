"""What a run shows while it trains, without changing what it learns.

- Online linear probe (as the official code and solo-learn do): a classifier on the *detached*
  representation of view 1, with its own SGD optimizer, so BYOL's parameters, optimizer state and
  RNG stream are exactly what they would be without it.
- kNN monitor: every `knn_every` epochs, kNN top-1 (k=200, cosine, T=0.07) of a seeded test subset
  against a seeded training bank, with the encoder in eval mode (running statistics untouched). Folder
  images are decoded again for each evaluation (through the run's workers), so the monitor holds
  features, never the subsets' pixels.
Under torchrun the probe is trained on every rank's slice with gradients averaged over ranks (and
synchronized batch norm), so all ranks hold the same probe; the kNN monitor runs on rank 0 alone,
with the encoder in eval mode, which needs no collective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from byol.data.datasets import decoding_workers, load_dataset
from byol.models.syncbn import convert_sync_batchnorm
from byol.probes.features import encode, split_features
from byol.probes.protocols import knn_accuracy
from byol.runtime.distributed import all_reduce_sum, average_gradients, is_distributed
from byol.runtime.errors import UserError
from byol.runtime.logs import log
from byol.training.schedules import learning_rate


class Monitor:
    def __init__(
        self, cfg, dataset, feature_dim: int, image_size: int, device: torch.device, total_steps: int, main: bool = True
    ):
        self.device = device
        self.total_steps = total_steps
        self.knn_every = cfg.knn_every
        has_labels = dataset.labels is not None and dataset.num_classes > 1
        self.num_classes = dataset.num_classes
        self.probe = None
        if cfg.online_probe and has_labels:
            # Initialised from its own seed so the global RNG (augmentations) is untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 3)
                probe = nn.Sequential(
                    nn.BatchNorm1d(feature_dim, affine=False), nn.Linear(feature_dim, dataset.num_classes)
                ).to(device)
            self.probe = convert_sync_batchnorm(probe, device) if is_distributed() else probe
            self.optimizer = torch.optim.SGD(self.probe.parameters(), lr=0.1, momentum=0.9, nesterov=True)
            self.correct = torch.zeros((), device=device)
            self.seen = torch.zeros((), device=device)
        self.bank = self.test = None
        self.size, self.workers = dataset.load_size or image_size, decoding_workers(cfg.workers)
        if self.knn_every and has_labels and main:
            self._choose_knn_subsets(cfg, dataset)

    def _choose_knn_subsets(self, cfg, dataset) -> None:
        """Seeded subsets of the training split (the bank) and of the test split, numbered alike."""
        try:
            test = load_dataset(cfg.dataset, cfg.data, "test", load_size=self.size, classes=dataset.classes)
        except UserError as error:
            log.warning(f"kNN monitor off: {error}")
            return
        self.bank = dataset.subset(cfg.knn_bank, cfg.seed + 1)
        self.test = test.subset(cfg.knn_test, cfg.seed + 2)

    # ---- online probe

    def probe_step(self, representation: torch.Tensor, labels: torch.Tensor | None, step: int) -> None:
        if self.probe is None or labels is None:
            return
        labels = labels.to(self.device, non_blocking=True)
        logits = self.probe(representation.detach().float())
        loss = F.cross_entropy(logits, labels)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, self.total_steps, warmup_steps=0, peak_lr=0.1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.probe.parameters())
        self.optimizer.step()
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)

    def log_values(self) -> dict:
        if self.probe is None:
            return {}
        correct, seen = all_reduce_sum(torch.stack([self.correct, self.seen])).tolist()
        if seen == 0:
            return {}
        value = {"probe_top1": 100.0 * correct / seen}
        self.correct.zero_()
        self.seen.zero_()
        return value

    # ---- kNN monitor

    def knn_due(self, epoch: int, epochs: int) -> bool:
        return self.bank is not None and (epoch % self.knn_every == 0 or epoch == epochs)

    def knn(self, encoder: nn.Module, transform: nn.Module) -> float:
        extract = {"encoder": lambda images: encode(encoder, images, transform, self.device)}
        bank = split_features(self.bank, self.size, extract, batch_size=512, workers=self.workers)
        test = split_features(self.test, self.size, extract, batch_size=512, workers=self.workers)
        return knn_accuracy(
            bank.features["encoder"],
            bank.labels,
            test.features["encoder"],
            test.labels,
            self.num_classes,
            k=200,
            device=self.device,
        )

    # ---- resume

    def state_dict(self) -> dict | None:
        if self.probe is None:
            return None
        return {"probe": self.probe.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        if self.probe is not None and state:
            self.probe.load_state_dict(state["probe"])
            self.optimizer.load_state_dict(state["optimizer"])
