from pathlib import Path

import torch

from byol.probes.protocols import (
    balanced_subset,
    few_label_probe,
    few_label_subsets,
    knn_accuracy,
    knn_predict,
    knn_predict_many,
    linear_probe,
    top_k_accuracy,
)


def clusters(n_per_class=100, classes=5, dim=16, spread=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_knn_and_linear_are_perfect_on_separable_clusters():
    train_x, train_y = clusters(seed=0)
    test_x, test_y = clusters(n_per_class=40, seed=0)
    test_x = test_x + 0.05 * torch.randn_like(test_x)
    assert knn_accuracy(train_x, train_y, test_x, test_y, 5, k=20) == 100.0
    result = linear_probe(train_x, train_y, test_x, test_y, 5, epochs=30, weight_decays=(0.0,))
    assert result["top1"] == 100.0 and result["top5"] == 100.0


def test_random_labels_give_chance():
    generator = torch.Generator().manual_seed(1)
    train_x, test_x = torch.randn(2000, 32, generator=generator), torch.randn(1000, 32, generator=generator)
    train_y, test_y = (
        torch.randint(0, 10, (2000,), generator=generator),
        torch.randint(0, 10, (1000,), generator=generator),
    )
    assert abs(knn_accuracy(train_x, train_y, test_x, test_y, 10, k=200) - 10) < 4
    assert abs(linear_probe(train_x, train_y, test_x, test_y, 10, epochs=20, weight_decays=(0.0,))["top1"] - 10) < 4


def test_knn_weighted_vote_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[0.2, 1.0]])
    scores = knn_predict(bank, labels, query, k=3, num_classes=2, temperature=0.07)
    sims = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    weights = (sims / 0.07).exp()[0]
    assert torch.allclose(scores[0], torch.stack([weights[0] + weights[1], weights[2]]), rtol=1e-5)
    # k=1 takes only the nearest neighbour
    assert knn_predict(bank, labels, query, k=1, num_classes=2)[0].argmax() == 1


def test_every_k_from_one_pass_equals_its_own_knn():
    generator = torch.Generator().manual_seed(3)
    bank, query = torch.randn(500, 8, generator=generator), torch.randn(70, 8, generator=generator)
    labels = torch.randint(0, 4, (500,), generator=generator)
    many = knn_predict_many(bank, labels, query, (200, 20, 5), num_classes=4, chunk=32)
    similarity = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    for k in (200, 20, 5):
        nearest, index = similarity.topk(k, dim=1)  # each k on its own, the direct way
        expected = torch.zeros(70, 4).scatter_add_(1, labels[index], (nearest / 0.07).exp())
        assert torch.allclose(many[k], expected, rtol=1e-5)
    assert many[5].shape == (70, 4) and not torch.equal(many[5], many[20])


def test_top_k_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]])
    labels = torch.tensor([2, 0])
    assert top_k_accuracy(scores, labels, 1) == 50.0
    assert top_k_accuracy(scores, labels, 2) == 100.0


def test_balanced_subset_is_deterministic_and_balanced():
    labels = torch.arange(10).repeat_interleave(600)[torch.randperm(6000)]
    a = balanced_subset(labels, 0.01, seed=3)
    b = balanced_subset(labels, 0.01, seed=3)
    c = balanced_subset(labels, 0.01, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a) == 60 and len(set(a.tolist())) == 60
    assert torch.bincount(labels[a], minlength=10).tolist() == [6] * 10
    assert len(balanced_subset(labels, 0.10, seed=3)) == 600


def test_linear_probe_picks_weight_decay_on_held_out_data():
    train_x, train_y = clusters(spread=2.0)
    test_x, test_y = clusters(n_per_class=20, spread=2.0, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y, 5, epochs=5, weight_decays=(0.0, 1e-3))
    assert result["weight_decay"] in (0.0, 1e-3)
    assert 0 <= result["top1"] <= 100


def test_weight_decay_candidates_trained_side_by_side_end_as_if_trained_alone():
    from byol.probes.protocols import _fit_linear

    x, y = clusters(spread=3.0)
    rows, mean, std = torch.arange(len(x)), torch.zeros(1, x.shape[1]), torch.ones(1, x.shape[1])
    together = _fit_linear(x, y, rows, mean, std, 5, [0.0, 1e-2, 1e-1], epochs=3, batch_size=16, lr=0.1, seed=4)
    for head, wd in zip(together, [0.0, 1e-2, 1e-1]):
        (alone,) = _fit_linear(x, y, rows, mean, std, 5, [wd], epochs=3, batch_size=16, lr=0.1, seed=4)
        assert torch.allclose(head.weight, alone.weight, atol=1e-6) and torch.allclose(head.bias, alone.bias, atol=1e-6)
    assert not torch.allclose(together[0].weight, together[2].weight, atol=1e-3)  # the decay did act


def test_knn_over_a_bank_in_chunks_equals_the_whole_bank_at_once(monkeypatch):
    from byol.probes import protocols as evaluate

    generator = torch.Generator().manual_seed(5)
    bank, query = torch.randn(700, 16, generator=generator), torch.randn(50, 16, generator=generator)
    labels = torch.randint(0, 5, (700,), generator=generator)
    whole = knn_predict_many(bank, labels, query, (200, 20), num_classes=5, chunk=16)
    monkeypatch.setattr(evaluate, "BANK_CHUNK_BYTES", 64 * 16 * 4)  # 64 rows at a time: 11 chunks
    chunked = knn_predict_many(bank, labels, query, (200, 20), num_classes=5, chunk=16)
    for k in (200, 20):
        torch.testing.assert_close(chunked[k], whole[k], rtol=1e-6, atol=1e-6)


def test_features_past_the_spill_size_are_memory_mapped_and_read_back(monkeypatch):
    from byol.probes import features

    monkeypatch.setattr(features, "SPILL_BYTES", 100)
    mapped, real_memmap = [], features.np.memmap
    monkeypatch.setattr(
        features.np, "memmap", lambda *args, **kwargs: mapped.append(args) or real_memmap(*args, **kwargs)
    )
    store = features.FeatureStore(10, 8)
    assert len(mapped) == 1 and not Path(mapped[0][0]).exists()  # unlinked at once: nothing left on disk
    store.append(torch.ones(4, 8))
    store.append(torch.full((3, 8), 2.0))
    result = store.tensor()
    assert result.shape == (7, 8) and result[:4].eq(1).all() and result[4:].eq(2).all()
    assert (
        linear_probe(
            torch.cat([result, -result]),
            torch.tensor([0] * 7 + [1] * 7),
            result,
            torch.zeros(7),
            2,
            epochs=3,
            weight_decays=(0.0,),
        )["top1"]
        == 100.0
    )


def test_few_label_probe_is_perfect_on_separable_clusters():
    train_x, train_y = clusters(n_per_class=200, spread=0.5, seed=0)
    test_x, test_y = clusters(n_per_class=40, spread=0.5, seed=0)
    test_x = test_x + 0.05 * torch.randn_like(test_x)
    for fraction in (0.01, 0.10):
        subsets = few_label_subsets(train_y, fraction, count=3, seed=0)
        assert min(few_label_probe(train_x, train_y, test_x, test_y, 5, subsets)) == 100.0


def test_few_label_probe_on_random_labels_is_chance():
    generator = torch.Generator().manual_seed(2)
    train_x, test_x = torch.randn(6000, 32, generator=generator), torch.randn(2000, 32, generator=generator)
    train_y = torch.randint(0, 10, (6000,), generator=generator)
    test_y = torch.randint(0, 10, (2000,), generator=generator)
    accuracies = few_label_probe(train_x, train_y, test_x, test_y, 10, few_label_subsets(train_y, 0.10, seed=0))
    assert len(accuracies) == 3 and all(abs(a - 10) < 4 for a in accuracies)


def test_few_label_subsets_are_seeded_balanced_distinct_and_nested():
    labels = torch.arange(10).repeat_interleave(600)[torch.randperm(6000)]
    a, b, c = (few_label_subsets(labels, 0.01, 3, seed) for seed in (5, 5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # the same seed, the same subsets
    assert not any(torch.equal(x, y) for x, y in zip(a, c))  # another seed, other subsets
    assert len({tuple(x.tolist()) for x in a}) == 3  # the subsets of one seed differ from one another
    assert all(torch.bincount(labels[x], minlength=10).tolist() == [6] * 10 for x in a)
    assert not any(torch.equal(x, balanced_subset(labels, 0.01, 5)) for x in a)  # not the semi fine-tune's
    wide = few_label_subsets(labels, 0.10, 3, seed=5)
    assert all(set(x.tolist()) <= set(w.tolist()) and len(w) == 600 for x, w in zip(a, wide))


def test_few_label_probe_is_deterministic_and_draws_no_random_numbers():
    train_x, train_y = clusters(spread=3.0)
    test_x, test_y = clusters(n_per_class=20, spread=3.0, seed=1)
    subsets = few_label_subsets(train_y, 0.10, seed=0)
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    first = few_label_probe(train_x, train_y, test_x, test_y, 5, subsets)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    torch.manual_seed(123)  # another global RNG state: the same figures
    assert few_label_probe(train_x, train_y, test_x, test_y, 5, subsets) == first


def test_few_label_probe_standardises_with_the_subset_statistics():
    train_x, train_y = clusters(n_per_class=200, spread=0.5)
    test_x, test_y = clusters(n_per_class=40, spread=0.5)
    subsets = few_label_subsets(train_y, 0.10, seed=1)
    shifted = few_label_probe(train_x * 1e3 + 5e3, train_y, test_x * 1e3 + 5e3, test_y, 5, subsets)
    assert shifted == few_label_probe(train_x, train_y, test_x, test_y, 5, subsets) == [100.0] * 3
