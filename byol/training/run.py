"""`byol train`: data → augment → learner → loss → optimizer and schedules → checkpoints and encoder.

`train()` sets up the processes; `fit()` is the run, top to bottom. Each piece it sequences has one
owner: `RunDir` the output folder, `Trainer` the model and its step, `StepLogger` what is reported,
`StopSignals` pre-emption. Under torchrun every process runs this same code (docs/distributed.md):
collectives happen on every rank, and only rank 0 writes (RunDir and StepLogger see to that).
"""

from __future__ import annotations

import gc
import math
import signal
import time

import torch

from byol.data.datasets import BatchStream, ImageDataset, decoding_workers, load_dataset
from byol.data.folders import DecodedCache
from byol.probes.collapse import collapse_metrics
from byol.runtime.device import Runtime, resolve_device
from byol.runtime.distributed import (
    Context,
    all_reduce_mean,
    all_reduce_sum,
    elastic_restart_count,
    local_device,
    setup,
    teardown,
)
from byol.runtime.errors import UserError
from byol.runtime.logs import log, verbosity
from byol.runtime.signals import StopSignals
from byol.training.config import TrainConfig
from byol.training.run_dir import RunDir
from byol.training.step_logger import StepLogger
from byol.training.trainer import Schedule, Trainer


def train(cfg: TrainConfig, quiet: bool = False) -> dict:
    """Run (or resume) one training job into cfg.out; return a summary.

    Launched by torchrun, every process calls this; they train one model with DDP (see distributed.py).
    """
    device = local_device(resolve_device(cfg.device))
    context = setup(device)
    try:
        with verbosity(quiet, main=context.is_main):
            runtime = Runtime.resolve(device, cfg.precision, cfg.channels_last)
            runtime.prepare()
            summary = fit(cfg, runtime, context, quiet)
        # The run's objects go now, while the process group is alive: DDP holds the group, and a group
        # destroyed only at the interpreter's exit can abort the process there ("terminate called without an
        # active exception", seen in 2-rank runs stopped by --stop-after-steps). Then every rank is done
        # before any tears the group down.
        gc.collect()
        context.barrier()
        return summary
    finally:
        teardown(context)


def fit(cfg: TrainConfig, runtime: Runtime, context: Context, quiet: bool = False) -> dict:
    run = RunDir(cfg.out, main=context.is_main)
    restarts = elastic_restart_count()
    if restarts:
        log.info(f"torchrun restart {restarts} after a failed worker: continuing from {run.checkpoint}")
    # Rank 0 decides between a fresh run, a resume and a refusal; every rank gets its answer and state.
    state = context.main_decides(lambda: run.state_to_resume(cfg.resume or restarts > 0))
    # The same initial weights on every rank.
    torch.manual_seed(cfg.seed)
    dataset, stream = training_data(cfg, runtime, context)
    image_size = cfg.image_size or dataset.native_size
    schedule = Schedule.for_run(cfg, len(stream))
    warn_if_it_ends_in_warmup(cfg, schedule)
    trainer = Trainer(cfg, dataset, image_size, runtime, context, schedule)
    # Restored before the first step, whose DDP wrap broadcasts rank 0's weights to every rank.
    step = trainer.restore(state, str(run.checkpoint)) if state is not None else 0
    if state is not None:
        log.info(f"resuming {run.checkpoint} at step {step}/{schedule.total_steps}")
    elif cfg.resume:
        log.info(f"--resume: no checkpoint in {run.path} yet, starting fresh")
    del state
    log.info(f"precision {runtime.describe_precision()}")
    run.start(cfg, resolved_values(cfg, runtime, context, schedule, image_size, trainer.sync_bn), step)
    logger = StepLogger(run, context.is_main, quiet, cfg.tensorboard, schedule.total_steps, step)
    try:
        if step == 0:
            # The untrained encoder on the monitor's own subsets: the kNN curve's honest starting point.
            knn = trainer.knn(0)
            if knn is not None:
                logger.write({"step": 0, "epoch": 0.0, "knn_top1": knn})
                log.info(f"kNN monitor before training: {knn:.2f}%")
        started, first_step = time.perf_counter(), step
        step, stopped_by, last_loss = loop(cfg, trainer, stream, run, logger, step)
    finally:
        run.close()
        logger.close()
    wall = time.perf_counter() - started
    return finish(cfg, trainer, stream, run, context, step, step - first_step, stopped_by, last_loss, wall)


def warn_if_it_ends_in_warmup(cfg: TrainConfig, schedule: Schedule) -> None:
    if schedule.ends_in_warmup:
        log.warning(
            f"--warmup-epochs {cfg.warmup_epochs:g} is as long as the run (--epochs {cfg.epochs}): the LR climbs "
            f"to {schedule.lr_reached:.4g} at the last step, not to the peak {schedule.peak_lr:.4g}, and never "
            "decays (a shorter --warmup-epochs fixes it)"
        )


def loop(
    cfg: TrainConfig, trainer: Trainer, stream: BatchStream, run: RunDir, logger: StepLogger, step: int
) -> tuple[int, int | None, float]:
    """Steps until the end of the run, `--stop-after-steps`, or a signal; returns (step, signal, last loss)."""
    schedule = trainer.schedule
    stop_at = min(schedule.total_steps, cfg.stop_after_steps or schedule.total_steps)
    window = LossWindow(trainer.runtime.device)
    last_loss, stopped_by = math.nan, None
    trainer.learner.train()
    with StopSignals() as signals:
        while step < stop_at and stopped_by is None:
            epoch, first_batch = divmod(step, schedule.steps_per_epoch)
            for images, labels in stream.epoch(cfg.seed, epoch, start=first_batch):
                result = trainer.step(images, labels, step)
                window.add(result.loss)
                step += 1
                end_of_epoch = step % schedule.steps_per_epoch == 0
                logged = step % cfg.log_every == 0 or step == stop_at or end_of_epoch
                if logged:
                    record = step_record(cfg, trainer, window, result, step, end_of_epoch)
                    last_loss = record["loss"]
                    logger.log_step(record)
                # Ranks agree on stopping at log steps (one collective); a single process stops at once.
                if trainer.context.world_size == 1 or logged:
                    stopped_by = signals.agreed(trainer.runtime.device)
                epoch_checkpoint = (
                    end_of_epoch
                    and cfg.checkpoint_epochs
                    and (step // schedule.steps_per_epoch) % cfg.checkpoint_epochs == 0
                )
                if step % cfg.checkpoint_every == 0 or epoch_checkpoint or step == stop_at or stopped_by:
                    trainer.check_finite(window.loss_sum, step, str(run.path))
                    run.write_checkpoint(trainer.state_dict(step), cfg.keep_checkpoints)
                if step >= stop_at or stopped_by:
                    break
    return step, stopped_by, last_loss


def step_record(cfg: TrainConfig, trainer: Trainer, window: LossWindow, result, step: int, end_of_epoch: bool) -> dict:
    """The metrics record of a logged step. Collectives in a fixed order on every rank: the loss, the
    probe's accuracy, then (at an epoch end) the kNN monitor's barrier."""
    loss, images_per_s = window.close(cfg.batch_size)
    record = {
        "step": step,
        "epoch": step / trainer.schedule.steps_per_epoch,
        "loss": loss,
        "lr": result.lr,
        **({"tau": result.tau} if getattr(trainer.learner, "has_target", False) else {}),
        "images_per_s": images_per_s,
        "world_size": trainer.context.world_size,
    }
    record.update(trainer.monitor.log_values())
    if not math.isfinite(loss):
        raise UserError(
            f"loss is {loss} at step {step}: lower --lr or use --precision fp32; "
            f"the last good checkpoint in {cfg.out} is kept"
        )
    # Rank 0's slice of the batch: a sample of the global batch, which is enough to see collapse.
    record.update(collapse_metrics(result.outputs.projections[0], result.outputs.representations[0]))
    if end_of_epoch:
        knn = trainer.knn(step // trainer.schedule.steps_per_epoch)
        if knn is not None:
            record["knn_top1"] = knn
    return record


class LossWindow:
    """The loss summed on the device since the last log step, so a step never waits for the device."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.steps += 1

    def close(self, batch_size: int) -> tuple[float, float]:
        """(mean loss over the window and the ranks, images/s), then a new window. The host sync of a log step."""
        loss = (all_reduce_mean(self.loss_sum) / self.steps).item()
        images_per_s = self.steps * batch_size / max(time.perf_counter() - self.started, 1e-9)
        self.loss_sum.zero_()
        self.steps, self.started = 0, time.perf_counter()
        return loss, images_per_s


def training_data(cfg: TrainConfig, runtime: Runtime, context: Context) -> tuple[ImageDataset, BatchStream]:
    """The training split (a download happens once, on rank 0 first) and its stream of global batches."""
    with context.main_first():
        dataset = load_dataset(cfg.dataset, cfg.data, "train", load_size=folder_load_size(cfg))
    dataset = dataset.subset(cfg.subset, cfg.seed)
    if len(dataset) < cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(dataset)} training images")
    world_size = context.world_size
    if world_size > 1 and not cfg.sync_bn and cfg.batch_size // world_size < 2:
        raise UserError(
            f"--batch-size {cfg.batch_size} over {world_size} processes leaves "
            f"{cfg.batch_size // world_size} image per process, too few for per-process batch norm: use "
            "--sync-bn or a larger batch"
        )
    cache = None
    if cfg.cache_decoded and dataset.files is not None:
        with context.main_first():  # rank 0 creates the files; the other ranks map them
            cache = DecodedCache(cfg.cache_decoded, dataset.files, dataset.load_size)
        log.info(f"decoded cache {cache.stem}: {cache.filled()} of {len(dataset)} images already decoded")
    stream = BatchStream(
        dataset,
        cfg.batch_size,
        decoding_workers(cfg.workers),
        pin_memory=runtime.device.type == "cuda",
        rank=context.rank,
        world_size=world_size,
        max_bad_fraction=cfg.max_bad_fraction,
        device=runtime.device,
        cache=cache,
        decode_on=gpu_decoding(cfg, runtime.device),
    )
    return dataset, stream


def gpu_decoding(cfg: TrainConfig, device: torch.device) -> torch.device | None:
    """The device folder JPEGs are decoded on with --decode gpu (checked again now that `auto` is resolved)."""
    if cfg.decode != "gpu":
        return None
    if device.type != "cuda":
        raise UserError(f"--decode gpu: nvjpeg needs a CUDA device; this run is on {device.type}")
    return device


def folder_load_size(cfg: TrainConfig) -> int:
    # Folder images are stored a little larger than the training size (256 for 224, as ImageNet
    # pipelines do) so the random crop has pixels to choose from.
    return round((cfg.image_size or 224) * 8 / 7)


def resolved_values(
    cfg: TrainConfig, runtime: Runtime, context: Context, schedule: Schedule, image_size: int, sync_bn: bool
) -> dict:
    """What config.yaml's `resolved:` section shows: values derived from the config and the machine."""
    return {
        "world_size": context.world_size,
        "batch_per_process": cfg.batch_size // context.world_size,
        "sync_bn": sync_bn,
        "peak_lr": schedule.peak_lr,
        "lr_reached": schedule.lr_reached,
        "steps_per_epoch": schedule.steps_per_epoch,
        "total_steps": schedule.total_steps,
        "image_size": image_size,
        "device": str(runtime.device),
        "autocast": str(runtime.amp_dtype or "fp32"),
        "decoding_workers": decoding_workers(cfg.workers),
    }


def count_bad_images(stream: BatchStream, trainer: Trainer) -> int:
    """Undecodable images over every rank, warned about once."""
    # NCCL reduces device tensors only.
    bad_images = int(all_reduce_sum(torch.tensor(stream.bad_images, device=trainer.runtime.device)))
    if bad_images:
        log.warning(
            f"{bad_images} images could not be decoded and were skipped (their batch slots went to the "
            "next readable image)"
        )
    return bad_images


def finish(
    cfg: TrainConfig,
    trainer: Trainer,
    stream: BatchStream,
    run: RunDir,
    context: Context,
    step: int,
    trained: int,
    stopped_by: int | None,
    last_loss: float,
    wall: float,
) -> dict:
    """The summary; for a finished run, the encoder and summary.json; otherwise how to continue.
    `trained`: the steps this invocation took (a resumed run started later)."""
    total_steps = trainer.schedule.total_steps
    bad_images = count_bad_images(stream, trainer)
    summary = {
        "steps": step,
        "total_steps": total_steps,
        "epochs": step / trainer.schedule.steps_per_epoch,
        "final_loss": last_loss,
        "wall_s": wall,
        "images_per_s": trained * cfg.batch_size / wall if trained else None,
        "world_size": context.world_size,
        "out": str(run.path),
        "finished": step >= total_steps,
        "bad_images": bad_images,
    }
    resume = f"continue with: byol train --out {run.path} --resume"
    if stopped_by is not None and step < total_steps:
        summary["stopped_by_signal"] = stopped_by
        log.warning(f"{signal.Signals(stopped_by).name}: checkpoint written at step {step}/{total_steps}; {resume}")
        return summary
    if step < total_steps:
        log.info(f"stopped at step {step}/{total_steps}; {resume}")
        return summary
    run.write_encoder(trainer.encoder_weights(), trainer.info)
    run.write_json(RunDir.SUMMARY, summary)
    context.barrier()  # no rank reports success before the weights are on disk
    log.info(
        f"done: {step} steps in {wall:.0f} s"
        + (f" ({summary['images_per_s']:.0f} images/s)" if trained else "")
        + f"; encoder weights in {run.encoder}"
    )
    return summary
