"""The Trainer: everything a training step touches, built from a config.

The step itself is `step.training_step` (both views, loss, update, target EMA; importable from here too).
`Trainer` builds learner, augmentation, optimizer and monitors from a config, restores them from a
checkpoint, runs steps on its schedule (eagerly, or replayed as a CUDA graph with --cuda-graphs), and
writes the one definition of what a checkpoint holds (`state_dict`).

Order that matters, kept by structure: `restore` must come before the first `step`, because the
first step wraps the learner in DDP, whose first broadcast sends rank 0's weights to every rank.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch

from byol.data.augment import (
    LOCAL_VIEW,
    VIEW1,
    VIEW2,
    BYOLAugment,
    EvalTransform,
    MultiCropAugment,
    local_size_for,
    without,
)
from byol.data.datasets import ImageDataset
from byol.methods import build_method
from byol.methods.byol import ViewOutputs
from byol.models import zoo
from byol.models.backbones import build_backbone, infer_feature_dim, resolve_stem
from byol.models.syncbn import convert_sync_batchnorm
from byol.runtime.checkpoint import EncoderInfo, TrainingState
from byol.runtime.compile_cache import use_compile_cache
from byol.runtime.device import Runtime
from byol.runtime.distributed import Context, all_reduce_sum, gather, wrap
from byol.runtime.errors import UserError
from byol.runtime.logs import log
from byol.runtime.rng import augmentation_seed, rng_state, set_rng_state
from byol.training.config import TrainConfig, changed_trajectory_keys, flag
from byol.training.graphs import GraphedStep
from byol.training.monitor import Monitor
from byol.training.optim import build_optimizer
from byol.training.schedules import learning_rate, scaled_lr, target_tau, weight_decay
from byol.training.step import training_step


def build_learner(cfg: TrainConfig, channels: int, image_size: int) -> torch.nn.Module:
    """The configured method around the configured backbone, on the CPU, in the default memory format."""
    backbone = build_backbone(cfg.backbone, cfg.width, image_size, channels, cfg.stem, cfg.norm)
    # Every option the method's constructor names (head sizes, temperatures, queue, ...) comes from the config.
    return build_method(cfg.method, backbone, backbone.feature_dim, **cfg.to_dict())


def optimizer_for(cfg: TrainConfig, learner: torch.nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the learner's trainable parameters, at LR 0 (the schedule sets it)."""
    return build_optimizer(
        cfg.optimizer,
        learner,
        cfg.weight_decay,
        cfg.momentum,
        cfg.trust_coefficient,
        cfg.clip_lr,
        cfg.bias_lr_multiplier,
    )


def check_input_size(backbone: torch.nn.Module, channels: int, size: int, name: str) -> None:
    """Refuse, in one line, a backbone that cannot take multi-crop's smaller local crops (a fixed-size ViT)."""
    try:
        infer_feature_dim(backbone, (channels, size, size))
    except (RuntimeError, AssertionError, ValueError) as error:
        raise UserError(
            f"--local-crops: {name} does not take the {size} px local crops "
            f"({str(error).splitlines()[0][:100]}); use a model that takes any size (timm's ViTs do, "
            "torchvision's do not) or --local-crops 0"
        ) from None


def build_augment(cfg: TrainConfig, image_size: int, mean, std) -> torch.nn.Module:
    """The two view pipelines with the configured crop scale and ablations, and the local crops of
    multi-crop when asked for."""
    crop_scale, removed = (cfg.crop_min_scale, 1.0), cfg.removed_augmentations()
    view1 = without(dataclasses.replace(VIEW1, crop_scale=crop_scale), removed)
    view2 = without(dataclasses.replace(VIEW2, crop_scale=crop_scale), removed)
    if not cfg.local_crops:
        return BYOLAugment(image_size, mean, std, view1, view2)
    local = without(dataclasses.replace(LOCAL_VIEW, crop_scale=cfg.local_crop_scale), removed)
    return MultiCropAugment(
        image_size, mean, std, cfg.local_crops, cfg.local_size or local_size_for(image_size), view1, view2, local
    )


@dataclass(frozen=True)
class Schedule:
    """How long a run is and what LR and τ each step uses: pure functions of the step."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    base_tau: float
    final_tau: float = 1.0
    lr_floor: float = 0.0  # the cosine's end, as a fraction of the peak
    weight_decays: tuple[float, float] | None = None  # (start, end) of a cosine weight-decay schedule

    @classmethod
    def for_run(cls, cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
        # The peak LR scales with the global batch, whatever the number of processes.
        decays = None if cfg.final_weight_decay is None else (cfg.weight_decay, cfg.final_weight_decay)
        return cls(
            steps_per_epoch,
            cfg.epochs * steps_per_epoch,
            round(cfg.warmup_epochs * steps_per_epoch),
            scaled_lr(cfg.lr, cfg.batch_size),
            cfg.base_tau,
            cfg.final_tau,
            cfg.lr_floor,
            decays,
        )

    @property
    def ends_in_warmup(self) -> bool:
        return self.warmup_steps >= self.total_steps

    @property
    def lr_reached(self) -> float:
        """The largest LR the run uses: `peak_lr`, unless the run ends inside its warm-up."""
        return self.lr(self.total_steps - 1) if self.ends_in_warmup else self.peak_lr

    def lr(self, step: int) -> float:
        return learning_rate(step, self.total_steps, self.warmup_steps, self.peak_lr, self.lr_floor * self.peak_lr)

    def tau(self, step: int) -> float:
        return target_tau(step, self.total_steps, self.base_tau, self.final_tau)

    def weight_decay(self, step: int) -> float | None:
        return None if self.weight_decays is None else weight_decay(step, self.total_steps, *self.weight_decays)


class StepResult(NamedTuple):
    loss: torch.Tensor  # on the device, not synchronised
    outputs: ViewOutputs
    lr: float
    tau: float


class Trainer:
    """Learner, augmentation, optimizer, grad scaler and monitors of one run, built from its config."""

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: ImageDataset,
        image_size: int,
        runtime: Runtime,
        context: Context,
        schedule: Schedule,
    ):
        self.cfg, self.runtime, self.context, self.schedule = cfg, runtime, context, schedule
        device = runtime.device
        self.augment = build_augment(cfg, image_size, dataset.mean, dataset.std).to(device)
        self.eval_transform = EvalTransform(image_size, dataset.mean, dataset.std).to(device)
        learner = build_learner(cfg, dataset.channels, image_size)
        if cfg.local_crops:
            check_input_size(
                learner.online_encoder, dataset.channels, cfg.local_size or local_size_for(image_size), cfg.backbone
            )
        self.sync_bn = context.world_size > 1 and cfg.sync_bn
        if self.sync_bn:
            learner = convert_sync_batchnorm(learner, device)
        self.learner = learner.to(device).to(memory_format=runtime.memory_format)
        self.optimizer = optimizer_for(cfg, self.learner)
        if cfg.compile:
            self.compile_augment(device)
        library_model = cfg.backbone.startswith(zoo.PREFIXES)  # built as it is: no width or stem of ours
        if library_model and (cfg.width != 1.0 or cfg.stem != "auto"):
            log.info(f"{cfg.backbone} is built as its library defines it: --width and --stem apply to the ResNets")
        self.info = EncoderInfo(
            cfg.backbone,
            1.0 if library_model else cfg.width,
            dataset.channels,
            image_size,
            self.learner.feature_dim,
            cfg.dataset,
            tuple(dataset.mean),
            tuple(dataset.std),
            "auto" if library_model else resolve_stem(cfg.stem, image_size),
            cfg.norm,
        )
        self.monitor = Monitor(
            cfg, dataset, self.learner.feature_dim, image_size, device, schedule.total_steps, main=context.is_main
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=runtime.amp_dtype == torch.float16)
        if cfg.cuda_graphs:
            problem = self.cuda_graphs_problem()
            if problem:
                raise UserError(f"--cuda-graphs: {problem}")
        self._model = None  # the learner in DDP, made by the first step
        self._run_step = None  # the step on the device, eager or graphed, made by the first step

    def compile_augment(self, device: torch.device) -> None:
        log.info(f"--compile: compiled graphs are cached in {use_compile_cache()}")
        if device.type == "cuda":  # sync-free there (augment.py), so it compiles without graph breaks
            self.augment.compile()

    @property
    def model(self) -> torch.nn.Module:
        """The learner as the step calls it: in DDP under torchrun, compiled with --compile. DDP wraps first,
        so the compiled graph is split at DDP's gradient buckets and the all-reduce overlaps the backward.
        `compile()` works in place: parameter names, and so checkpoints, stay those of the eager learner."""
        if self._model is None:
            self._model = wrap(self.learner, self.runtime.device)
            if self.cfg.compile:
                self._model.compile()
        return self._model

    def cuda_graphs_problem(self) -> str | None:
        if self.runtime.device.type != "cuda":
            return f"CUDA graphs need a CUDA device; this run is on {self.runtime.device.type} (--device cuda)"
        if self.context.world_size > 1:
            return (
                "one process only: under torchrun the graph would hold DDP's all-reduce, which has never run on "
                "several GPUs here (docs/performance.md); DDP overlaps it with the backward eagerly"
            )
        return self.learner.graph_problem

    @property
    def run_step(self):
        """`loss, outputs = run_step(images, tau)`: `training_step` on this trainer's parts, or with
        --cuda-graphs the same step replayed as a CUDA graph (graphs.py)."""
        if self._run_step is None:
            model, runtime = self.model, self.runtime
            # Neither holds the Trainer itself: a cycle through it would keep DDP, and with it the process
            # group, alive until the interpreter's exit (see train.train).
            if self.cfg.cuda_graphs:
                self._run_step = GraphedStep(
                    model, self.augment, self.optimizer, self.scaler, runtime.memory_format, runtime.amp_dtype
                )
            else:
                self._run_step = functools.partial(
                    training_step,
                    model,
                    self.augment,
                    self.optimizer,
                    self.scaler,
                    memory_format=runtime.memory_format,
                    amp_dtype=runtime.amp_dtype,
                )
        return self._run_step

    def restore(self, state: TrainingState, source: str) -> int:
        """Load a checkpoint into every part; returns its step. Only before the first step."""
        if self._model is not None:
            raise RuntimeError("restore() after the first step: DDP has already broadcast the unrestored weights")
        saved_stem = state.encoder_info.get("stem", self.info.stem)
        if saved_stem != self.info.stem:  # same parameter shapes, so the load below would not notice
            raise UserError(
                f"{source}: trained with the '{saved_stem}' stem, this configuration builds "
                f"'{self.info.stem}': resume with --stem {saved_stem}, or choose another --out"
            )
        changed = changed_trajectory_keys(state.config, self.cfg)
        if changed:  # a resume promises the uninterrupted run's result; a changed option would break it silently
            shown = ", ".join(
                f"{flag(k)} {state.config.get(k, getattr(TrainConfig(), k))!r} (now {getattr(self.cfg, k)!r})"
                for k in changed
            )
            raise UserError(
                f"{source}: trained with {shown}: resume with the run's own options "
                "(byol train --out DIR --resume), or choose another --out"
            )
        if state.world_size != self.context.world_size:
            log.warning(
                f"resuming a {state.world_size}-process run with {self.context.world_size}: the global "
                "batch and data order are unchanged, the augmentation draws are not"
            )
        try:
            self.learner.load_state_dict(state.model)
            self.optimizer.load_state_dict(state.optimizer)
            self.monitor.load_state_dict(state.monitor)
        except (RuntimeError, ValueError, KeyError) as error:
            raise UserError(f"{source}: does not match this configuration ({str(error).splitlines()[0]})") from None
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        set_rng_state(state.rng)
        return state.step

    def step(self, images: torch.Tensor, labels: torch.Tensor | None, step: int) -> StepResult:
        """Training step number `step` (0-based) on this rank's slice of the global batch."""
        lr, tau, decay = self.schedule.lr(step), self.schedule.tau(step), self.schedule.weight_decay(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_multiplier", 1.0)
            if decay is not None and not group.get("lars_exclude"):  # biases and norm parameters stay undecayed
                group["weight_decay"] = decay
        self.learner.set_progress(step, step / self.schedule.steps_per_epoch)
        torch.manual_seed(augmentation_seed(self.cfg.seed, step, self.context.rank))
        loss, outputs = self.run_step(images.to(self.runtime.device, non_blocking=True), tau)
        self.monitor.probe_step(outputs.representations[0], labels, step)
        return StepResult(loss.detach(), outputs, lr, tau)

    def check_finite(self, loss_sum: torch.Tensor, at_step: int, out: str) -> None:
        """Never replace a good checkpoint with a diverged one: the loss since the last log and every
        weight, checked on every rank (one all-reduce, one host sync)."""
        weights_finite = torch.stack([torch.isfinite(p).all() for p in self.learner.parameters()]).all()
        if not (torch.isfinite(all_reduce_sum(loss_sum)) & weights_finite):
            raise UserError(
                f"the loss or the weights became non-finite before step {at_step}: lower --lr or use "
                f"--precision fp32; the last good checkpoint in {out} is kept"
            )

    def knn(self, epoch: int) -> float | None:
        """The kNN monitor's top-1 when it is due at this epoch. Every rank calls it; rank 0 computes it in
        eval mode (no collective inside) while the others wait."""
        value = None
        if self.context.is_main and self.monitor.knn_due(epoch, self.cfg.epochs):
            value = self.monitor.knn(self.learner.online_encoder, self.eval_transform)
        self.context.barrier()
        return value

    def state_dict(self, step: int) -> TrainingState:
        """The checkpoint's contents. Every rank calls it at the same step: the learner's per-rank state is
        gathered here (one all-gather per entry, only for methods that have such state)."""
        model = self.learner.state_dict()
        for key in getattr(self.learner, "rank_local_state", ()):
            if key in model and self.context.world_size > 1:
                with torch.no_grad():
                    model[key] = gather(model[key])[0]
        return TrainingState(
            step=step,
            config=self.cfg.to_dict(),
            world_size=self.context.world_size,
            model=model,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            encoder_info=self.info.to_dict(),
            monitor=self.monitor.state_dict(),
            rng=rng_state(),
        )

    def encoder_weights(self) -> dict[str, torch.Tensor]:
        return self.learner.online_encoder.state_dict()
