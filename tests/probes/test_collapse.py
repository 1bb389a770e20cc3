import math

import torch

from byol import effective_rank, embedding_std, is_collapsed


def test_constant_embeddings_have_zero_spread_and_rank_one():
    constant = torch.ones(64, 32) * torch.randn(1, 32)
    assert embedding_std(constant) < 1e-6
    assert abs(effective_rank(constant) - 1) < 0.01
    metrics = {"embedding_std": embedding_std(constant), "effective_rank": effective_rank(constant)}
    assert is_collapsed(metrics, 32)


def test_isotropic_embeddings_are_healthy():
    torch.manual_seed(0)
    isotropic = torch.randn(4096, 32)
    assert abs(embedding_std(isotropic) - 1 / math.sqrt(32)) < 0.01
    assert effective_rank(isotropic) > 30
    metrics = {"embedding_std": embedding_std(isotropic), "effective_rank": effective_rank(isotropic)}
    assert not is_collapsed(metrics, 32)


def test_rank_counts_the_dimensions_in_use():
    torch.manual_seed(0)
    four_dims = torch.randn(1024, 4) @ torch.randn(4, 64)
    assert 2.5 < effective_rank(four_dims) <= 4.01
