"""BYOL (Bootstrap Your Own Latent, Grill et al. 2020), faithful to the paper, for PyTorch.

The core works inside your own training loop:

    learner = byol.BYOL(backbone)                 # any images → feature-vector module
    augment = byol.BYOLAugment(32, mean, std)
    loss = learner(*augment(images)); loss.backward(); optimizer.step()
    learner.update_target(byol.target_tau(step, total_steps))
"""

__version__ = "0.1.0"

from .augment import VIEW1, VIEW2, BYOLAugment, MultiCropAugment, ViewAugment, ViewConfig, without
from .backbones import build_backbone
from .collapse import effective_rank, embedding_std, is_collapsed
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
from .model import BYOL, MLPHead
from .optim import LARS, lars_param_groups
from .schedules import learning_rate, scaled_lr, target_tau

__all__ = [
    "BYOL",
    "DINO",
    "LARS",
    "BarlowTwins",
    "Learner",
    "MoCo",
    "SwAV",
    "VICReg",
    "barlow_twins_loss",
    "dino_loss",
    "moco_loss",
    "sinkhorn",
    "swav_loss",
    "vicreg_loss",
    "VIEW1",
    "VIEW2",
    "BYOLAugment",
    "MultiCropAugment",
    "MLPHead",
    "SimCLR",
    "SimSiam",
    "ViewAugment",
    "ViewConfig",
    "ViewOutputs",
    "build_backbone",
    "build_method",
    "byol_loss",
    "effective_rank",
    "embedding_std",
    "is_collapsed",
    "lars_param_groups",
    "learning_rate",
    "negatives_term",
    "nt_xent_loss",
    "scaled_lr",
    "target_tau",
    "without",
]
