"""Randomness a run can reproduce: per-step seeds and the global RNG states a checkpoint carries."""

import random

import numpy as np
import torch

from byol.runtime.rng import augmentation_seed, rng_state, set_rng_state


def test_augmentation_seeds_depend_on_seed_step_and_rank_only():
    assert augmentation_seed(0, 5, 0) == augmentation_seed(0, 5, 0)
    seeds = {augmentation_seed(s, t, r) for s in (0, 1) for t in (0, 1, 2) for r in (0, 1)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    set_rng_state(None)  # older checkpoints held none: nothing happens
