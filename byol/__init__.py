"""BYOL (Bootstrap Your Own Latent, Grill et al. 2020), faithful to the paper, for PyTorch.

The core works inside your own training loop:

    learner = byol.BYOL(backbone)                 # any images → feature-vector module
    augment = byol.BYOLAugment(32, mean, std)
    loss = learner(*augment(images)); loss.backward(); optimizer.step()
    learner.update_target(byol.target_tau(step, total_steps))
"""

__version__ = "0.1.0"

from .augment import VIEW1, VIEW2, BYOLAugment, ViewAugment, ViewConfig, without
from .backbones import build_backbone
from .collapse import effective_rank, embedding_std, is_collapsed
from .loss import byol_loss, negatives_term, nt_xent_loss
from .methods import SimCLR, SimSiam, build_method
from .model import BYOL, MLPHead, ViewOutputs
from .optim import LARS, lars_param_groups
from .schedules import learning_rate, scaled_lr, target_tau

__all__ = [
    "BYOL",
    "LARS",
    "VIEW1",
    "VIEW2",
    "BYOLAugment",
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
