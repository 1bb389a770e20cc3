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
    "VIEW1": "augment",
    "VIEW2": "augment",
    "LOCAL_VIEW": "augment",
    "BYOLAugment": "augment",
    "MultiCropAugment": "augment",
    "ViewAugment": "augment",
    "ViewConfig": "augment",
    "without": "augment",
    "build_backbone": "backbones",
    "effective_rank": "collapse",
    "embedding_std": "collapse",
    "is_collapsed": "collapse",
    "export_encoder": "export",
    "load_encoder": "export",
    "Learner": "learner",
    "ViewOutputs": "learner",
    "barlow_twins_loss": "loss",
    "byol_loss": "loss",
    "dino_loss": "loss",
    "moco_loss": "loss",
    "negatives_term": "loss",
    "nt_xent_loss": "loss",
    "sinkhorn": "loss",
    "swav_loss": "loss",
    "vicreg_loss": "loss",
    "DINO": "methods",
    "BarlowTwins": "methods",
    "MoCo": "methods",
    "SimCLR": "methods",
    "SimSiam": "methods",
    "SwAV": "methods",
    "VICReg": "methods",
    "build_method": "methods",
    "BYOL": "model",
    "MLPHead": "heads",
    "LARS": "optim",
    "lars_param_groups": "optim",
    "learning_rate": "schedules",
    "scaled_lr": "schedules",
    "target_tau": "schedules",
    "training_step": "step",
    "GraphedStep": "graphs",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'byol' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)  # a submodule: `byol.distributed` works unimported
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs read; at run time the names above load lazily
    from .augment import LOCAL_VIEW, VIEW1, VIEW2, BYOLAugment, MultiCropAugment, ViewAugment, ViewConfig, without
    from .backbones import build_backbone
    from .collapse import effective_rank, embedding_std, is_collapsed
    from .export import export_encoder, load_encoder
    from .graphs import GraphedStep
    from .heads import MLPHead
    from .learner import Learner, ViewOutputs
    from .loss import (
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
    from .methods import DINO, BarlowTwins, MoCo, SimCLR, SimSiam, SwAV, VICReg, build_method
    from .model import BYOL
    from .optim import LARS, lars_param_groups
    from .schedules import learning_rate, scaled_lr, target_tau
    from .step import training_step
