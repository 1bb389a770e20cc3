"""DINO (Caron et al. 2021), as facebookresearch/dino computes it, with a ResNet backbone.

A student (encoder + DINO head) on every crop, and a teacher — its EMA — on the two global crops. The
loss is the cross-entropy between the teacher's centred, sharpened distribution of each global crop and
the student's distribution of every other crop. The centre is an EMA of the teacher's mean output over
all ranks; the teacher temperature warms up by epoch; the student's last layer is frozen for the first
epochs, and each parameter's gradient is clipped to a norm.
"""

from __future__ import annotations

import torch
from torch import nn

from byol.methods.learner import MomentumLearner, ViewOutputs
from byol.methods.losses import dino_loss
from byol.methods.multicrop import encode_by_size
from byol.models.heads import DINOHead
from byol.runtime.distributed import all_reduce_sum, rank_and_world


class DINO(MomentumLearner):
    accepts_local_views = True
    renamed_options = {"projection_dim": "bottleneck_dim", "temperature": "student_temperature"}

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        bottleneck_dim: int = 256,
        projector_hidden_dim: int = 2048,
        prototypes: int = 65536,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        teacher_temperature_start: float = 0.04,
        teacher_temperature_epochs: float = 0,
        center_momentum: float = 0.9,
        clip_grad: float = 3.0,
        freeze_head_epochs: float = 1.0,
    ):
        super().__init__()
        feature_dim = self.attach_encoder(backbone, feature_dim)
        self.bottleneck_dim, self.student_temperature = bottleneck_dim, student_temperature
        self.teacher_temperatures = (teacher_temperature_start, teacher_temperature, teacher_temperature_epochs)
        self.center_momentum, self.clip_grad, self.freeze_epochs = center_momentum, clip_grad, freeze_head_epochs
        self.online_projector = DINOHead(feature_dim, projector_hidden_dim, bottleneck_dim, prototypes)
        self.attach_target()
        self.register_buffer("center", torch.zeros(1, prototypes))  # the same on every rank; checkpointed

    def teacher_temperature(self) -> float:
        """Linear from the start value over the warm-up epochs, then constant; it changes at epoch boundaries."""
        start, end, epochs = self.teacher_temperatures
        epoch = int(self.epoch)
        if epochs <= 1 or epoch >= epochs:
            return end
        return start + (end - start) * epoch / (int(epochs) - 1)

    def graph_key(self):
        return self.teacher_temperature()  # a Python number in the loss: a new value needs a new CUDA graph

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, *local_views: torch.Tensor, return_outputs: bool = False
    ):
        views = [view1, view2, *local_views]
        representations = encode_by_size(self.online_encoder, views)
        logits = self.online_projector(torch.cat(representations))
        with torch.no_grad():
            teacher = self.target_projector(self.target_encoder(torch.cat([view1, view2])))
        loss = dino_loss(
            list(logits.chunk(len(views))),
            list(teacher.chunk(2)),
            self.center,
            self.student_temperature,
            self.teacher_temperature(),
        )
        if self.updating_state():
            self._update_center(teacher)
        if return_outputs:
            # The collapse monitor reads the encoder's output: DINO's normalised bottleneck is concentrated in
            # healthy runs too (its centring acts on the logits), so its spread would flag them (docs/methods.md).
            global_views = (representations[0], representations[1])
            return loss, ViewOutputs(global_views, global_views)
        return loss

    @torch.no_grad()
    def _update_center(self, teacher: torch.Tensor) -> None:
        """After the loss: centre ← m·centre + (1 − m)·mean of the teacher's outputs over every rank's batch."""
        _, world_size = rank_and_world()
        batch_center = all_reduce_sum(teacher.float().sum(dim=0, keepdim=True)) / (len(teacher) * world_size)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Each parameter's gradient clipped to norm `clip_grad` (Learner's), then the student's last layer
        left out while it is frozen."""
        super().before_optimizer_step()
        if self.epoch < self.freeze_epochs:
            for param in self.online_projector.last_layer.parameters():
                param.grad = None
