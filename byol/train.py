"""`byol train`: data → augment → BYOL (or a baseline) → loss → LARS + schedules → checkpoints and encoder.

Read top to bottom; every piece it uses is usable on its own from `byol`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .augment import VIEW1, VIEW2, BYOLAugment, EvalTransform, without
from .backbones import build_backbone, resolve_stem
from .checkpoint import EncoderInfo, keep_recent, load_checkpoint, save_checkpoint, save_weights
from .collapse import collapse_metrics, is_collapsed
from .config import TrainConfig, save_yaml
from .data import BatchStream, load_dataset
from .distributed import (
    Context,
    all_reduce_max,
    all_reduce_mean,
    all_reduce_sum,
    broadcast_object,
    convert_sync_batchnorm,
    elastic_restart_count,
    is_distributed,
    local_device,
    setup,
    teardown,
    unwrap,
    wrap,
)
from .errors import UserError
from .methods import build_method
from .monitor import Monitor, TensorBoard
from .optim import LARS, lars_param_groups
from .precision import autocast, describe_precision, resolve_precision
from .schedules import learning_rate, scaled_lr, target_tau

CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.safetensors"
METRICS = "metrics.jsonl"
TRAJECTORY_KEYS = ("dataset", "subset", "image_size", "crop_min_scale", "aug_remove", "method", "predictor",
                   "negatives_beta", "temperature", "norm", "backbone", "stem", "width", "projection_dim",
                   "projector_hidden_dim", "predictor_hidden_dim", "sync_bn", "epochs", "batch_size", "lr", "warmup_epochs", "optimizer", "momentum",
                   "weight_decay", "trust_coefficient", "base_tau", "precision", "seed")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
    return device


def image_size_for(cfg: TrainConfig, native_size: int) -> int:
    return cfg.image_size or native_size


def memory_format_for(channels_last: bool | None, device: torch.device) -> torch.memory_format:
    """channels_last when asked, or by default on CPU and CUDA, where it measured faster."""
    if channels_last is None:
        channels_last = device.type in ("cpu", "cuda")
    return torch.channels_last if channels_last else torch.contiguous_format


def build_learner(cfg: TrainConfig, channels: int, image_size: int) -> torch.nn.Module:
    backbone = build_backbone(cfg.backbone, cfg.width, image_size, channels, cfg.stem, cfg.norm)
    return build_method(cfg.method, backbone, backbone.feature_dim, projection_dim=cfg.projection_dim,
                        projector_hidden_dim=cfg.projector_hidden_dim, predictor_hidden_dim=cfg.predictor_hidden_dim,
                        predictor=cfg.predictor, negatives_beta=cfg.negatives_beta, temperature=cfg.temperature,
                        norm=cfg.norm)


def build_optimizer(cfg: TrainConfig, learner: torch.nn.Module) -> torch.optim.Optimizer:
    groups = lars_param_groups(learner, cfg.weight_decay)
    if cfg.optimizer == "lars":
        return LARS(groups, lr=0.0, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    if cfg.optimizer == "adamw":
        # β₁ = --momentum; biases and norm parameters stay out of weight decay, as with LARS.
        return torch.optim.AdamW(groups, lr=0.0, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum)


def training_step(learner: torch.nn.Module, augment: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, images: torch.Tensor, tau: float,
                  memory_format: torch.memory_format = torch.contiguous_format, amp_dtype: torch.dtype | None = None):
    """One step on a batch already on the device: both views, loss, update, target EMA. No host sync.

    `learner` may be wrapped in DistributedDataParallel (gradients averaged over ranks).

    `byol bench` times exactly this function, so its figures are the training loop's.
    """
    view1, view2 = augment(images)
    view1 = view1.contiguous(memory_format=memory_format)
    view2 = view2.contiguous(memory_format=memory_format)
    with autocast(images.device, amp_dtype):
        loss, outputs = learner(view1, view2, return_outputs=True)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    unwrap(learner).update_target(tau)
    return loss, outputs


def augmentation_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step's augmentations on one rank: a pure function of (seed, step, rank), as the
    official code folds the step into its RNG key. A resumed run, or a restarted worker, draws exactly
    what the uninterrupted run drew, without every rank's RNG state in the checkpoint; ranks draw differently."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def rng_state() -> dict:
    """Python's, numpy's and torch's global RNG states, in types a weights_only load accepts. The
    training loop itself reseeds torch every step (augmentation_seed); these are for anything else
    drawn between steps, by us or by a user's hook."""
    numpy_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                      "pos": numpy_state["state"]["pos"], "has_gauss": numpy_state["has_gauss"],
                      "gauss": numpy_state["gauss"]}}


def set_rng_state(state: dict | None) -> None:
    if not state or "python" not in state:  # older checkpoints held torch's state only
        return
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})


class StopSignals:
    """SIGTERM (pre-emption) and SIGINT (Ctrl-C) become a request to stop after the current step with a
    checkpoint. A second signal stops at once (the last checkpoint on disk is complete either way)."""

    NAMES = ("SIGTERM", "SIGINT")

    def __init__(self, announce):
        self.received: int | None = None
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not from a notebook worker)
        self.announce = announce
        for name in self.NAMES:
            number = getattr(signal, name)
            self.previous[number] = signal.signal(number, self._handle)

    def _handle(self, number, frame) -> None:
        if self.received is not None:
            self.restore()
            raise KeyboardInterrupt
        self.received = number
        self.announce(signal.Signals(number).name)

    def agreed(self, device: torch.device) -> int | None:
        """The signal to stop for, if any rank received one (one process: no tensor, no device sync)."""
        if not is_distributed():
            return self.received
        flag = torch.tensor(float(self.received or 0), device=device)
        return int(all_reduce_max(flag)) or None

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after the checkpoint we resume from, so each step appears once, and any line
    torn by a kill or a full disk in mid-write."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", math.inf) <= last_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


class Progress:
    """tqdm on a terminal; on a pipe or log file, a plain line at most every 10 s."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.last_print = 0.0
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, total: int, fields: dict) -> None:
        if not self.enabled:
            return
        text = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()}
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(text, refresh=True)
            return
        now = time.monotonic()
        if now - self.last_print >= 10 or step == total:
            self.last_print = now
            print(f"step {step}/{total} " + " ".join(f"{k}={v}" for k, v in text.items()), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def train(cfg: TrainConfig, quiet: bool = False) -> dict:
    """Run (or resume) one BYOL training job; return a summary. Writes into cfg.out.

    Launched by torchrun, every process calls this; they train one model with DDP (see distributed.py).
    """
    device = local_device(resolve_device(cfg.device))
    context = setup(device)
    try:
        return _train(cfg, quiet or not context.is_main, device, context)
    finally:
        teardown(context)


def _read_resume_state(checkpoint_path: Path, resume: bool, context: Context) -> dict | None:
    """Rank 0 decides (fresh, resume, or a refusal) and every rank gets the same answer and state."""
    outcome = None
    if context.is_main:
        try:
            if checkpoint_path.exists() and not resume:
                raise UserError(f"{checkpoint_path} exists: pass --resume to continue that run, or choose another --out")
            outcome = ("state", load_checkpoint(checkpoint_path) if resume and checkpoint_path.exists() else None)
        except UserError as error:
            outcome = ("error", str(error))
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise UserError(value)
    return value


def _train(cfg: TrainConfig, quiet: bool, device: torch.device, context: Context) -> dict:
    out = Path(cfg.out)
    checkpoint_path = out / CHECKPOINT
    main, world_size = context.is_main, context.world_size
    restarts = elastic_restart_count()
    if restarts:
        log(f"torchrun restart {restarts} after a failed worker: continuing from {checkpoint_path}", quiet)
    resume = cfg.resume or restarts > 0
    state = _read_resume_state(checkpoint_path, resume, context)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    amp_dtype = resolve_precision(cfg.precision, device)

    # ---- data
    with context.main_first():  # a download happens once
        dataset = load_dataset(cfg.dataset, cfg.data, "train", load_size=_folder_load_size(cfg))
    dataset = dataset.subset(cfg.subset, cfg.seed)
    image_size = image_size_for(cfg, dataset.native_size)
    if len(dataset) < cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(dataset)} training images")
    stream = BatchStream(dataset, cfg.batch_size, cfg.workers, pin_memory=device.type == "cuda",
                         rank=context.rank, world_size=world_size, max_bad_fraction=cfg.max_bad_fraction)
    if world_size > 1 and not cfg.sync_bn and cfg.batch_size // world_size < 2:
        raise UserError(f"--batch-size {cfg.batch_size} over {world_size} processes leaves {cfg.batch_size // world_size} "
                        "image per process, too few for per-process batch norm: use --sync-bn or a larger batch")
    steps_per_epoch = len(stream)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    peak_lr = scaled_lr(cfg.lr, cfg.batch_size)  # the global batch

    # ---- augment, model, optimizer
    crop_scale = (cfg.crop_min_scale, 1.0)
    removed = cfg.removed_augmentations()
    augment = BYOLAugment(image_size, dataset.mean, dataset.std,
                          without(dataclasses.replace(VIEW1, crop_scale=crop_scale), removed),
                          without(dataclasses.replace(VIEW2, crop_scale=crop_scale), removed)).to(device)
    learner = build_learner(cfg, dataset.channels, image_size)
    sync_bn = world_size > 1 and cfg.sync_bn
    if sync_bn:
        learner = convert_sync_batchnorm(learner, device)
    memory_format = memory_format_for(cfg.channels_last, device)
    learner = learner.to(device).to(memory_format=memory_format)
    optimizer = build_optimizer(cfg, learner)
    if cfg.compile:
        learner.compile()  # in place, so parameter names (and checkpoints) are those of the eager model
    info = EncoderInfo(cfg.backbone, cfg.width, dataset.channels, image_size, learner.feature_dim, cfg.dataset,
                       tuple(dataset.mean), tuple(dataset.std), resolve_stem(cfg.stem, image_size), cfg.norm)
    monitor = Monitor(cfg, dataset, learner.feature_dim, image_size, device, total_steps, main=main)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # ---- resume
    step = 0
    if state is not None:
        defaults = TrainConfig()  # a key added since the checkpoint was written had its default then
        changed = [k for k in TRAJECTORY_KEYS if state["config"].get(k, getattr(defaults, k)) != getattr(cfg, k)]
        if changed:
            log(f"warning: resuming with changed settings: {', '.join(changed)}", quiet)
        if state.get("world_size", 1) != world_size:
            log(f"warning: resuming a {state.get('world_size', 1)}-process run with {world_size}: the global batch "
                "and data order are unchanged, the augmentation draws are not", quiet)
        try:
            learner.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            monitor.load_state_dict(state.get("monitor"))
        except (RuntimeError, ValueError, KeyError) as error:
            raise UserError(f"{checkpoint_path}: does not match this configuration ({str(error).splitlines()[0]})") from None
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state.get("rng"))
        step = state["step"]
        if main:
            _truncate_metrics(out / METRICS, step)
        log(f"resuming {checkpoint_path} at step {step}/{total_steps}", quiet)
    elif resume:
        log(f"--resume: no checkpoint in {out} yet, starting fresh", quiet)
    del state
    log(f"precision {describe_precision(cfg.precision, device, amp_dtype)}", quiet or not main)
    model = wrap(learner, device)  # after loading, so DDP's initial broadcast sends the resumed weights

    if main:
        if step == 0:
            # No checkpoint: any metrics.jsonl here is from a run that died before its first one.
            (out / METRICS).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / "config.yaml", resolved={
            "world_size": world_size, "batch_per_process": cfg.batch_size // world_size, "sync_bn": sync_bn,
            "peak_lr": peak_lr, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
            "image_size": image_size, "device": str(device), "autocast": str(amp_dtype or "fp32"),
        })

    def checkpoint(at_step: int) -> None:
        # Never replace a good checkpoint with a diverged one: the loss since the last log and the weights.
        if not (torch.isfinite(all_reduce_sum(loss_sum)) and all(torch.isfinite(p).all() for p in learner.parameters())):
            raise UserError(f"the loss or the weights became non-finite before step {at_step}: lower --lr or use "
                            f"--precision fp32; the last good checkpoint in {out} is kept")
        if main:
            save_checkpoint(checkpoint_path, {
                "format": 1, "step": at_step, "config": cfg.to_dict(), "world_size": world_size,
                "model": learner.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "encoder_info": info.to_dict(), "monitor": monitor.state_dict(), "rng": rng_state(),
            })
            keep_recent(checkpoint_path, at_step, cfg.keep_checkpoints)

    # ---- train
    board = TensorBoard(out / "tensorboard" if cfg.tensorboard and main else None)
    augment_eval = EvalTransform(image_size, dataset.mean, dataset.std).to(device)
    metrics_file = open(out / METRICS, "a") if main else None

    def write_record(record: dict) -> None:
        if main:
            try:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            except OSError as error:
                raise UserError(f"{out / METRICS}: cannot write ({error.strerror or error}); the last checkpoint in "
                                f"{out} is kept, resume with --resume once there is room") from None
            board.log(record)

    def knn_monitor(epoch: int, record: dict) -> None:
        # Rank 0 alone, in eval mode (no collectives inside); the others wait for it.
        if main and monitor.knn_due(epoch, cfg.epochs):
            record["knn_top1"] = monitor.knn(learner.online_encoder, augment_eval)
        context.barrier()

    if step == 0:
        # The untrained encoder on the monitor's own subsets: the curve's honest starting point.
        untrained = {"step": 0, "epoch": 0.0}
        knn_monitor(0, untrained)
        if "knn_top1" in untrained:
            write_record(untrained)
            log(f"kNN monitor before training: {untrained['knn_top1']:.2f}%", quiet)
    learner.train()
    progress = Progress(total_steps, step, enabled=not quiet)
    loss_sum = torch.zeros((), device=device)
    window_start, window_steps = time.perf_counter(), 0
    run_start, run_start_step = time.perf_counter(), step
    last_loss = math.nan
    collapsed = False
    stop_at = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps else total_steps
    signals = StopSignals(lambda name: log(f"{name}: finishing this step, then writing a checkpoint", not main))
    stopped_by = None
    try:
        while step < stop_at and stopped_by is None:
            epoch, first_batch = divmod(step, steps_per_epoch)
            for images, labels in stream.epoch(cfg.seed, epoch, start=first_batch):
                lr = learning_rate(step, total_steps, warmup_steps, peak_lr)
                tau = target_tau(step, total_steps, cfg.base_tau)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                torch.manual_seed(augmentation_seed(cfg.seed, step, context.rank))
                loss, outputs = training_step(model, augment, optimizer, scaler, images.to(device, non_blocking=True),
                                              tau, memory_format, amp_dtype)
                monitor.probe_step(outputs.representations[0], labels, step)
                loss_sum += loss.detach()
                step += 1
                window_steps += 1

                end_of_epoch = step % steps_per_epoch == 0
                logged = step % cfg.log_every == 0 or step == stop_at or end_of_epoch
                if logged:
                    last_loss = (all_reduce_mean(loss_sum) / window_steps).item()  # the only host-device sync
                    elapsed = time.perf_counter() - window_start
                    record = {"step": step, "epoch": step / steps_per_epoch, "loss": last_loss, "lr": lr,
                              **({"tau": tau} if cfg.method == "byol" else {}),
                              "images_per_s": window_steps * cfg.batch_size / max(elapsed, 1e-9),
                              "world_size": world_size}
                    record.update(monitor.log_values())
                    if not math.isfinite(last_loss):
                        raise UserError(f"loss is {last_loss} at step {step}: lower --lr or use --precision fp32; "
                                        f"the last good checkpoint in {out} is kept")
                    # Rank 0's slice of the batch: a sample of the global batch, which is enough to see collapse.
                    record.update(collapse_metrics(outputs.projections[0], outputs.representations[0]))
                    if is_collapsed(record, cfg.projection_dim) != collapsed:
                        collapsed = not collapsed
                        log(f"warning: the representation has collapsed at step {step} (embedding_std "
                            f"{record['embedding_std']:.4f}, effective_rank {record['effective_rank']:.2f}); "
                            "see docs/ablations.md" if collapsed else f"step {step}: no longer collapsed", quiet)
                    if end_of_epoch:
                        knn_monitor(step // steps_per_epoch, record)
                    write_record(record)
                    progress.update(step, total_steps, {"loss": last_loss, **({"tau": tau} if "tau" in record else {}),
                                                        "lr": lr,
                                                        "img/s": round(record["images_per_s"]),
                                                        "rank": round(record["effective_rank"], 1),
                                                        **({"COLLAPSED": "yes"} if collapsed else {}),
                                                        **monitor.progress_fields(record)})
                    loss_sum.zero_()
                    window_start, window_steps = time.perf_counter(), 0
                # Ranks agree on stopping at log steps (one collective); a single process stops at once.
                if world_size == 1 or logged:
                    stopped_by = signals.agreed(device)
                if step % cfg.checkpoint_every == 0 or end_of_epoch or step == stop_at or stopped_by:
                    checkpoint(step)
                if step >= stop_at or stopped_by:
                    break
    finally:
        signals.restore()
        if metrics_file is not None:
            with contextlib.suppress(OSError):  # a full disk was already reported; do not mask that error
                metrics_file.close()
        board.close()
        progress.close()
    wall = time.perf_counter() - run_start
    trained = step - run_start_step
    bad_images = int(all_reduce_sum(torch.tensor(stream.bad_images, device=device)))  # NCCL reduces device tensors only
    if bad_images:
        log(f"warning: {bad_images} images could not be decoded and were skipped (their batch slots went to the "
            "next readable image)", quiet)

    summary = {"steps": step, "total_steps": total_steps, "epochs": step / steps_per_epoch, "final_loss": last_loss,
               "wall_s": wall, "images_per_s": trained * cfg.batch_size / wall if trained else None,
               "world_size": world_size, "out": str(out), "finished": step >= total_steps, "bad_images": bad_images}
    if stopped_by is not None and step < total_steps:
        summary["stopped_by_signal"] = stopped_by
        log(f"{signal.Signals(stopped_by).name}: checkpoint written at step {step}/{total_steps}; continue with: "
            f"byol train --config {out / 'config.yaml'} --resume", not main)
        return summary
    if step < total_steps:
        log(f"stopped at step {step}/{total_steps}; continue with: byol train --config {out / 'config.yaml'} --resume",
            quiet)
        return summary
    if main:
        save_weights(out / BACKBONE, learner.online_encoder.state_dict(), info.to_metadata())
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    context.barrier()  # no rank reports success before the weights are on disk
    log(f"done: {step} steps in {wall:.0f} s"
        + (f" ({summary['images_per_s']:.0f} images/s)" if trained else "")
        + f"; encoder weights in {out / BACKBONE}", quiet)
    return summary


def _folder_load_size(cfg: TrainConfig) -> int:
    # Folder images are stored a little larger than the training size (256 for 224, as ImageNet
    # pipelines do) so the random crop has pixels to choose from.
    size = cfg.image_size or 224
    return round(size * 8 / 7)
