"""The methods of the paper's comparison table beside BYOL, sharing its backbones, augmentations,
optimizers, run loop and evaluation.

Every learner has the same surface (byol/methods/learner.py), which is all the training loop uses. A method is
a class with that surface whose constructor's keyword defaults are its official recipe's model options
(head sizes, temperatures, queue length, ...), named like the TrainConfig options that set them. Adding
one is that class, one entry in `METHODS`, and, where its recipe's training options differ from
BYOL's (optimizer, LR, τ, crops), one entry in `RECIPES`. BYOL's own code in model.py does not change.
"""

from __future__ import annotations

import inspect

from torch import nn

from byol.methods.byol import BYOL
from byol.methods.dino import DINO
from byol.methods.moco import MoCo
from byol.methods.redundancy import BarlowTwins, VICReg
from byol.methods.simclr import SimCLR
from byol.methods.simsiam import SimSiam
from byol.methods.swav import SwAV

# name → learner class
METHODS = {
    "byol": BYOL,
    "simclr": SimCLR,
    "simsiam": SimSiam,
    "mocov2": MoCo,
    "swav": SwAV,
    "dino": DINO,
    "barlowtwins": BarlowTwins,
    "vicreg": VICReg,
}

# Training options of each official recipe (ImageNet scale) that differ from BYOL's; docs/methods.md has the
# sources and the CPU-scale values `byol ablate --suite methods` uses.
RECIPES = {
    "mocov2": dict(
        base_tau=0.999,
        final_tau=0.999,
        optimizer="sgd",
        lr=0.03,
        weight_decay=1e-4,
        warmup_epochs=0,
        crop_min_scale=0.2,
    ),
    "swav": dict(
        lr=0.6,
        lr_floor=0.001,
        warmup_epochs=0,
        weight_decay=1e-6,
        crop_min_scale=0.14,
        local_crops=6,
        local_crop_scale=(0.05, 0.14),
    ),
    "dino": dict(
        base_tau=0.996,
        optimizer="sgd",
        lr=0.03,
        weight_decay=1e-4,
        crop_min_scale=0.14,
        local_crops=8,
        local_crop_scale=(0.05, 0.14),
    ),
    "barlowtwins": dict(lr=0.2, bias_lr_multiplier=0.024, lr_floor=0.001, weight_decay=1e-6),
    "vicreg": dict(lr=0.2, lr_floor=0.001, weight_decay=1e-6),
}


# Options every learner honours, named in its constructor or not: attributes of Learner (learner.py).
LEARNER_OPTIONS = ("clip_grad",)


def model_defaults(method: str) -> dict:
    """The method's own defaults for its constructor's options (its official recipe's head sizes, ...)."""
    parameters = inspect.signature(METHODS[method]).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def method_defaults(method: str) -> dict:
    """Every option value the method's official recipe sets: its model options and its training options."""
    return {**model_defaults(method), **RECIPES.get(method, {})}


def build_method(method: str, backbone: nn.Module, feature_dim: int | None = None, /, **options) -> nn.Module:
    """A learner by name from `METHODS`, around `backbone` (which maps images to `feature_dim` features;
    None finds it as `BYOL` does: what the backbone declares, else a dry run).
    `options` may be any of TrainConfig's options; the method takes those its constructor names and keeps
    its own defaults for the rest."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    cls = METHODS[method]
    accepted = set(model_defaults(method)) - {"feature_dim"}
    learner = cls(backbone, feature_dim, **{k: v for k, v in options.items() if k in accepted})
    for name in LEARNER_OPTIONS:
        if name in options:
            setattr(learner, name, options[name])
    return learner


__all__ = [
    "BYOL",
    "DINO",
    "LEARNER_OPTIONS",
    "METHODS",
    "RECIPES",
    "BarlowTwins",
    "MoCo",
    "SimCLR",
    "SimSiam",
    "SwAV",
    "VICReg",
    "build_method",
    "method_defaults",
]
