"""The surface every self-supervised method here has, and all that the run loop uses.

    loss = learner(view1, view2, *local_views)     # (loss, ViewOutputs) with return_outputs=True
    learner.set_progress(step, epoch)               # before each step's forward; epoch is fractional
    learner.before_optimizer_step()                 # after backward (gradients unscaled), before the step
    learner.update_target(tau)                      # after the optimizer step; a no-op without a target
    learner.online_encoder, learner.feature_dim
    learner.clip_grad, learner.rank_local_state     # gradient clipping; per-rank state the checkpoint gathers
    learner.graph_problem, learner.graph_key()      # whether and when --cuda-graphs may replay the forward

`view1`, `view2` are the two global crops; `local_views` the small crops of multi-crop (SwAV, DINO).
State a method keeps across steps (MoCo's queue, SwAV's queue, DINO's centre) changes only in a training
forward with gradients enabled, so a monitor calling the learner under `no_grad` changes nothing.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from byol.models.backbones import feature_size


@torch.no_grad()
def clip_gradients_per_parameter(parameters, max_norm: float) -> None:
    """Scale each parameter's gradient to norm ≤ `max_norm` on its own (DINO's clipping, not one global norm),
    in two multi-tensor kernels and without reading anything back to the host; 0 turns it off."""
    if not max_norm:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads:
        norms = torch.stack(torch._foreach_norm(grads))
        torch._foreach_mul_(grads, torch.clamp(max_norm / (norms + 1e-6), max=1.0).unbind())


class ViewOutputs(NamedTuple):
    """What a learner computed on the way to its loss, for monitors (probe, collapse)."""

    representations: tuple[torch.Tensor, torch.Tensor]  # online encoder outputs y₁, y₂ of the global crops
    projections: tuple[torch.Tensor, torch.Tensor]  # the head outputs the collapse monitor looks at


class Learner(nn.Module):
    """Defaults of the surface above: no local crops, no progress-dependent state, no target."""

    accepts_local_views = False  # multi-crop: only methods whose official recipe uses it
    clip_grad = 0.0  # each parameter's gradient clipped to this norm before the step (0: off; --clip-grad)
    has_target = False  # an EMA target network: `update_target(tau)` moves it, the log shows τ
    # state_dict entries that differ between ranks, each (1, ...) per process: a run under torchrun saves
    # them concatenated over the ranks, and each rank's load takes its own row (SwAV's queue)
    rank_local_state: tuple[str, ...] = ()
    # why a CUDA graph could not replay the forward (graphs.py), e.g. it changes Python state; None: it can
    graph_problem: str | None = None
    # options that switch part of this method off (the paper's ablations); other methods refuse them
    ablations: tuple[str, ...] = ()
    # an option's earlier name → its name now, for config files written before the rename
    renamed_options: dict[str, str] = {}

    @classmethod
    def config_problem(cls, config, given: tuple[str, ...] = ()) -> str | None:
        """What this method refuses in a resolved TrainConfig, as a one-line error naming the option, or None;
        `given`: the options named on the command line. Which options it takes is its constructor's keywords
        (methods.model_defaults); the ablations of other methods are refused by TrainConfig.validate."""
        if config.local_crops and not cls.accepts_local_views:
            return f"--local-crops {config.local_crops}: --method {config.method} takes no local crops"
        return None

    def __init__(self):
        super().__init__()
        self.step, self.epoch = 0, 0.0

    def attach_encoder(
        self, backbone: nn.Module, feature_dim: int | None = None, input_shape: tuple[int, int, int] | None = None
    ) -> int:
        """Make `backbone` the online encoder and return the size D of its (B, D) features: `feature_dim` when
        given, else what `feature_size` finds. The heads are built on D, after the encoder, so it stays the
        first module (parameter order, and with it optimizer state, is unchanged)."""
        self.online_encoder = backbone
        self.feature_dim = feature_size(backbone, input_shape) if feature_dim is None else feature_dim
        return self.feature_dim

    def set_progress(self, step: int, epoch: float) -> None:
        self.step, self.epoch = step, epoch

    def graph_key(self):
        """Python values the forward reads that may change during a run (none here); graphs.py captures the
        step again when they do."""

    def before_optimizer_step(self) -> None:
        """Gradient surgery between backward and the optimizer step: here the per-parameter clipping every
        method honours; a method that also freezes parts of itself calls this first, as DINO's code does."""
        clip_gradients_per_parameter(self.parameters(), self.clip_grad)

    def update_target(self, tau: float) -> None:
        """ξ ← τ·ξ + (1 − τ)·θ for a method with a target network; nothing otherwise."""

    def check_views(self, local_views: tuple) -> None:
        if local_views and not self.accepts_local_views:
            raise ValueError(f"{type(self).__name__} takes two views, not local crops as well")

    def updating_state(self) -> bool:
        """Whether this forward may change state kept across steps (queues, centres)."""
        return self.training and torch.is_grad_enabled()


class MomentumLearner(Learner):
    """A learner with a target network: BYOL's target, MoCo's key encoder, DINO's teacher.

    The target is a copy of the online encoder and projector that takes no gradient and moves only by
    `update_target`. A subclass builds its online modules, then calls `attach_target()`: the target comes
    after them, so parameter names and order (and with them checkpoints and optimizer state) stay put."""

    has_target = True

    def attach_target(self) -> None:
        self.target_encoder = copy.deepcopy(self.online_encoder)
        self.target_projector = copy.deepcopy(self.online_projector)
        for param in self.target_parameters():
            param.requires_grad_(False)

    def online_parameters(self) -> list[nn.Parameter]:
        """Parameters the EMA tracks, in the same order as `target_parameters`."""
        return [*self.online_encoder.parameters(), *self.online_projector.parameters()]

    def target_parameters(self) -> list[nn.Parameter]:
        return [*self.target_encoder.parameters(), *self.target_projector.parameters()]

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """ξ ← τ·ξ + (1 − τ)·θ for every target parameter, in two fused multi-tensor calls."""
        target = self.target_parameters()
        torch._foreach_mul_(target, tau)
        torch._foreach_add_(target, self.online_parameters(), alpha=1 - tau)
