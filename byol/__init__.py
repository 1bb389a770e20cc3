"""BYOL (Bootstrap Your Own Latent, Grill et al. 2020), faithful to the paper, for PyTorch.

The core works inside your own training loop:

    learner = byol.BYOL(backbone)                 # any images → feature-vector module
    augment = byol.BYOLAugment(32, mean, std)
    loss = learner(*augment(images)); loss.backward(); optimizer.step()
    learner.update_target(byol.target_tau(step, total_steps))

Names are imported on first use (PEP 562), so `import byol` and `byol --version` do not wait for torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name → the module that defines it
_HOMES = {
    "VIEW1": "data.augment",
    "VIEW2": "data.augment",
    "LOCAL_VIEW": "data.augment",
    "BYOLAugment": "data.augment",
    "MultiCropAugment": "data.augment",
    "ViewAugment": "data.augment",
    "ViewConfig": "data.augment",
    "without": "data.augment",
    "build_backbone": "models.backbones",
    "effective_rank": "probes.collapse",
    "embedding_std": "probes.collapse",
    "is_collapsed": "probes.collapse",
    "export_encoder": "evaluation.export",
    "load_encoder": "evaluation.export",
    "Learner": "methods.learner",
    "ViewOutputs": "methods.learner",
    "barlow_twins_loss": "methods.losses",
    "byol_loss": "methods.losses",
    "dino_loss": "methods.losses",
    "moco_loss": "methods.losses",
    "negatives_term": "methods.losses",
    "nt_xent_loss": "methods.losses",
    "sinkhorn": "methods.losses",
    "swav_loss": "methods.losses",
    "vicreg_loss": "methods.losses",
    "DINO": "methods",
    "BarlowTwins": "methods",
    "MoCo": "methods",
    "SimCLR": "methods",
    "SimSiam": "methods",
    "SwAV": "methods",
    "VICReg": "methods",
    "build_method": "methods",
    "BYOL": "methods.byol",
    "MLPHead": "models.heads",
    "LARS": "training.optim",
    "lars_param_groups": "training.optim",
    "learning_rate": "training.schedules",
    "scaled_lr": "training.schedules",
    "target_tau": "training.schedules",
    "training_step": "training.step",
    "GraphedStep": "training.graphs",
}

__all__ = sorted(_HOMES)
# public modules under their former names
_MODULES = {"distributed": "runtime.distributed"}


def __getattr__(name: str):
    if name in _MODULES:  # the module's name before the stage packages
        return importlib.import_module(f".{_MODULES[name]}", __name__)
    if name not in _HOMES:
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'byol' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)  # a stage package: `byol.training` works unimported
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs read; at run time the names above load lazily
    from byol.data.augment import (
        LOCAL_VIEW,
        VIEW1,
        VIEW2,
        BYOLAugment,
        MultiCropAugment,
        ViewAugment,
        ViewConfig,
        without,
    )
    from byol.evaluation.export import export_encoder, load_encoder
    from byol.methods import DINO, BarlowTwins, MoCo, SimCLR, SimSiam, SwAV, VICReg, build_method
    from byol.methods.byol import BYOL
    from byol.methods.learner import Learner, ViewOutputs
    from byol.methods.losses import (
        barlow_twins_loss,
        byol_loss,
        dino_loss,
        moco_loss,
        negatives_term,
        nt_xent_loss,
        sinkhorn,
        swav_loss,
        vicreg_loss,
    )
    from byol.models.backbones import build_backbone
    from byol.models.heads import MLPHead
    from byol.probes.collapse import effective_rank, embedding_std, is_collapsed
    from byol.training.graphs import GraphedStep
    from byol.training.optim import LARS, lars_param_groups
    from byol.training.schedules import learning_rate, scaled_lr, target_tau
    from byol.training.step import training_step
