"""Peer libraries' BYOL training steps for `byol bench --compare`, each as its README/examples show it.

Every peer gets our backbone (same architecture, width, stem), the same batch of uint8 images on
the same device, and heads of the paper's size (4096 → 256). Everything else is the peer's own:
its augmentation, its loss, its optimizer and its target update. The peers are imported inside each
step builder: they are optional (`pip install 'byol[bench]'`), never dependencies of byol.
"""

from __future__ import annotations

import copy

import torch

from byol.models.backbones import build_backbone
from byol.runtime.device import autocast


def byol_pytorch_step(backbone: str, width: float, image_size: int, images: torch.Tensor, amp_dtype):
    """lucidrains' byol-pytorch README: `learner(images)` (it augments inside, on the device), Adam 3e-4,
    then `update_moving_average()`."""
    from byol_pytorch import BYOL as LucidBYOL

    device = images.device
    encoder = build_backbone(backbone, width, image_size, images.shape[1])
    learner = LucidBYOL(encoder, image_size=image_size, hidden_layer="avgpool").to(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-4)

    def step():
        with autocast(device, amp_dtype):
            loss = learner(images.float() / 255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        return loss

    return step


def lightly_step(backbone: str, width: float, image_size: int, images: torch.Tensor, amp_dtype):
    """lightly's examples/pytorch/byol.py: BYOLTransform on each image (as its DataLoader would, here in
    the timed step), heads from lightly.models.modules, NegativeCosineSimilarity, SGD 0.06,
    update_momentum with a cosine schedule."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    device = images.device
    encoder = build_backbone(backbone, width, image_size, images.shape[1])
    online = torch.nn.ModuleDict(
        {
            "backbone": encoder,
            "projection": BYOLProjectionHead(encoder.feature_dim, 4096, 256),
            "prediction": BYOLPredictionHead(256, 4096, 256),
        }
    ).to(device)
    target = torch.nn.ModuleDict(
        {"backbone": copy.deepcopy(online["backbone"]), "projection": copy.deepcopy(online["projection"])}
    )
    deactivate_requires_grad(target)
    transform = BYOLTransform(BYOLView1Transform(input_size=image_size), BYOLView2Transform(input_size=image_size))
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(online.parameters(), lr=0.06)
    from torchvision.transforms.functional import to_pil_image

    pictures = [to_pil_image(image) for image in images.cpu()]  # its transforms take PIL images

    def predict(x):
        return online["prediction"](online["projection"](online["backbone"](x)))

    def project_target(x):
        return target["projection"](target["backbone"](x)).detach()

    def step():
        update_momentum(online["backbone"], target["backbone"], m=0.996)
        update_momentum(online["projection"], target["projection"], m=0.996)
        views = [transform(picture) for picture in pictures]
        x0 = torch.stack([v[0] for v in views]).to(device)
        x1 = torch.stack([v[1] for v in views]).to(device)
        with autocast(device, amp_dtype):
            loss = 0.5 * (criterion(predict(x0), project_target(x1)) + criterion(predict(x1), project_target(x0)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    return step


STEPS = {"byol-pytorch": byol_pytorch_step, "lightly": lightly_step}
