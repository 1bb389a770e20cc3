"""The monitors leave training alone: the probe draws from its own RNG, the kNN monitor is due when
asked, and a missing test split turns the kNN monitor off with one warning."""

import torch
from PIL import Image
from torch import nn

from byol.data.datasets import load_dataset
from byol.runtime.logs import verbosity
from byol.training.config import resolve
from byol.training.monitor import Monitor

CPU = torch.device("cpu")


class ToFloat(nn.Module):
    def forward(self, images):
        return images.float() / 255


def monitor(fashion_dir, **overrides) -> Monitor:
    cfg = resolve(overrides={"data": str(fashion_dir), "knn_bank": 64, "knn_test": 32, **overrides})
    dataset = load_dataset(cfg.dataset, cfg.data, "train")
    return Monitor(cfg, dataset, feature_dim=8, image_size=28, device=CPU, total_steps=10)


def test_building_the_probe_leaves_the_global_rng_alone(fashion_dir):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    monitor(fashion_dir, knn_every=0)
    assert torch.equal(torch.rand(3), expected)


def test_probe_learns_and_its_state_round_trips(fashion_dir):
    first, second = monitor(fashion_dir, knn_every=0), monitor(fashion_dir, knn_every=0)
    features, labels = torch.randn(16, 8), torch.randint(0, 10, (16,))
    first.probe_step(features, labels, step=0)
    assert set(first.log_values()) == {"probe_top1"} and first.log_values() == {}  # counted once, then reset
    second.load_state_dict(first.state_dict())
    for a, b in zip(first.probe.parameters(), second.probe.parameters()):
        assert torch.equal(a, b)


def test_knn_is_due_every_n_epochs_and_at_the_end(fashion_dir):
    m = monitor(fashion_dir, knn_every=2, epochs=5)
    assert [epoch for epoch in range(6) if m.knn_due(epoch, 5)] == [0, 2, 4, 5]
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 8))
    assert 0 <= m.knn(encoder, ToFloat()) <= 100


def test_a_dataset_without_a_test_split_turns_the_knn_monitor_off_with_one_warning(tmp_path, capsys):
    for label in ("a", "b"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "train" / label / f"{i}.png")
    cfg = resolve(overrides={"dataset": "folder", "data": str(tmp_path), "knn_bank": 4, "knn_test": 4})
    with verbosity():
        m = Monitor(cfg, load_dataset("folder", str(tmp_path), "train", load_size=8), 8, 8, CPU, 10)
    assert m.bank is None and not m.knn_due(1, 1)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: kNN monitor off:") and "test/" in err
