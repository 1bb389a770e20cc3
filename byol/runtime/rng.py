"""Randomness a run can reproduce: each step's augmentation seed, and the global RNG states a
checkpoint carries."""

from __future__ import annotations

import random

import numpy as np
import torch


def augmentation_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step's augmentations on one rank: a pure function of (seed, step, rank), as the
    official code folds the step into its RNG key. A resumed run, or a restarted worker, draws exactly
    what the uninterrupted run drew, without every rank's RNG state in the checkpoint; ranks draw differently."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def rng_state() -> dict:
    """Python's, numpy's and torch's global RNG states, in types a weights_only load accepts. The
    training loop itself reseeds torch every step (augmentation_seed); these are for anything else
    drawn between steps, by us or by a user's hook."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": numpy_state["state"]["pos"],
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        },
    }


def set_rng_state(state: dict | None) -> None:
    if not state or "python" not in state:  # older checkpoints held torch's state only
        return
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
