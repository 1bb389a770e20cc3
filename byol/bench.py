"""`byol bench`: time full BYOL training steps and say how close they come to the hardware.

A step is `trainer.training_step`, the function the training loop runs: both augmented views of every
image, online forward + backward, target forward, LARS, target EMA. Data loading is left out: the
batch is uint8 images already on the device. Peers (`--compare`) run their own recommended step on
the same backbone, batch, image size and device, in this process.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from byol import peers
from byol.data.augment import BYOLAugment
from byol.models import zoo
from byol.runtime.compile_cache import use_compile_cache
from byol.runtime.device import Runtime, resolve_device
from byol.runtime.errors import UserError
from byol.training.config import TrainConfig
from byol.training.graphs import GraphedStep
from byol.training.schedules import scaled_lr
from byol.training.step import training_step
from byol.training.trainer import build_learner, optimizer_for

PEERS = tuple(peers.STEPS)
# Untimed steps at least, with CUDA graphs: the graph's eager warm-up, its capture and one replay.
GRAPH_WARMUP = GraphedStep.WARMUP_STEPS + 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], object], device: torch.device, steps: int, warmup: int) -> list[float]:
    """Seconds per call of `step`, each timed on its own after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call (matmuls and convolutions, forward and backward) by torch's flop counter."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def best_rate(fn: Callable[[], object], flops: float, device: torch.device, seconds: float) -> float:
    """Best FLOP/s of `fn` (`flops` per call) over three timed runs of about seconds/3 each, each run
    synchronised once at its end, after an untimed call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    calls = max(1, int(seconds / 3 / max(time.perf_counter() - start, 1e-9)))
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        best = max(best, flops * calls / max(time.perf_counter() - start, 1e-9))
    return best


def peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> tuple[float, str]:
    """The roof a step is measured against: the best FLOP/s of square matmuls and of 3×3 channels-last
    convolutions (the kernels a ResNet step runs) at several sizes, in this process's threads and dtype.
    A matmul alone under-measured it on an AMD CPU, where the step then showed 175% (docs/performance.md)."""
    cuda = device.type == "cuda"
    generator = torch.Generator(device).manual_seed(0)  # leaves the global RNG alone
    candidates = []
    for n in (4096, 8192) if cuda else (1024, 2048):
        a, b = (torch.randn(n, n, device=device, generator=generator).to(dtype) for _ in range(2))
        candidates.append((best_rate(lambda a=a, b=b: a @ b, 2 * n**3, device, seconds / 4), f"matmul {n}²"))
    for channels, side, batch in ((256, 32, 128), (512, 16, 128)) if cuda else ((256, 16, 32), (512, 8, 64)):
        x = torch.randn(batch, channels, side, side, device=device, generator=generator).to(dtype)
        w = torch.randn(channels, channels, 3, 3, device=device, generator=generator).to(dtype)
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
        flops = 2 * batch * channels * channels * 9 * side * side
        candidates.append(
            (
                best_rate(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1), flops, device, seconds / 4),
                f"conv3x3 {channels}ch {side}px",
            )
        )
    return max(candidates)


def peak_memory_mb(device: torch.device) -> tuple[str, float]:
    if device.type == "cuda":
        return "peak_cuda_memory_mb", torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: the process's peak resident set (Linux reports KiB), the whole process not just the step.
    return "peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_images(batch_size: int, channels: int, image_size: int, device: torch.device) -> torch.Tensor:
    """The benchmark's batch: uint8 images, as the data pipeline hands them over."""
    return torch.randint(0, 256, (batch_size, channels, image_size, image_size), dtype=torch.uint8, device=device)


def _our_step(
    backbone: str,
    width: float,
    image_size: int,
    images: torch.Tensor,
    runtime: Runtime,
    compile_model: bool,
    stem: str = "auto",
    cuda_graphs: bool = False,
):
    # The learner and optimizer `byol train` would build (paper heads, LARS) for this backbone.
    batch_size, channels = images.shape[:2]
    cfg = TrainConfig(backbone=backbone, width=width, stem=stem, batch_size=batch_size)
    learner = build_learner(cfg, channels, image_size).to(runtime.device).to(memory_format=runtime.memory_format)
    optimizer = optimizer_for(cfg, learner)
    for group in optimizer.param_groups:
        group["lr"] = scaled_lr(cfg.lr, batch_size)
    augment = BYOLAugment(image_size, (0.5,) * channels, (0.25,) * channels).to(runtime.device)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)

    # The same step replayed as a CUDA graph: its first calls run eagerly, the next one captures.
    graphed = (
        GraphedStep(learner, augment, optimizer, scaler, runtime.memory_format, runtime.amp_dtype)
        if cuda_graphs
        else None
    )

    def step():
        if graphed is not None:
            return graphed(images, 0.996)
        return training_step(
            learner, augment, optimizer, scaler, images, 0.996, runtime.memory_format, runtime.amp_dtype
        )

    def augment_only():
        return augment(images)

    flops = count_flops(step)  # eager: the flop counter cannot see inside compiled graphs; the maths is the same
    if compile_model:
        use_compile_cache()
        learner.compile()  # in place: parameter names and checkpoints stay the same
        if runtime.device.type == "cuda":
            augment.compile()  # as `byol train --compile` does: sync-free there, so no graph breaks
    return step, augment_only, flops


def bench(
    backbone: str = "resnet18",
    width: float = 1.0,
    image_size: int = 32,
    batch_size: int = 64,
    steps: int = 20,
    warmup: int = 3,
    device: str = "auto",
    precision: str = "auto",
    channels: int = 3,
    channels_last: bool | None = None,
    compile_model: bool = False,
    compare: tuple[str, ...] = (),
    stem: str = "auto",
    cuda_graphs: bool = False,
) -> dict:
    _check_options(steps, batch_size, compare)
    torch.manual_seed(0)
    runtime = _runtime(device, precision, channels_last, cuda_graphs)
    dev = runtime.device
    warmup = max(warmup, GRAPH_WARMUP) if cuda_graphs else warmup
    images = random_images(batch_size, channels, image_size, dev)
    ours = (backbone, width, image_size, images, runtime, compile_model, stem, cuda_graphs)
    step, augment_only, flops_per_step = _our_step(*ours)
    first_step_s = time_steps(step, dev, 1, 0)[0]  # with --compile: the compilation, from its cache or not
    seconds = statistics.median(time_steps(step, dev, steps, warmup))
    augment_seconds = statistics.median(time_steps(augment_only, dev, steps, 1))
    utilization = _utilization(flops_per_step, batch_size, seconds, dev, runtime)  # before the memory, as ever
    memory_key, memory = peak_memory_mb(dev)
    result = {
        "device": device_name(dev),
        **dict(backbone=backbone, width=width, stem=stem, image_size=image_size, batch_size=batch_size),
        "precision": str(runtime.amp_dtype or torch.float32).replace("torch.", ""),
        "precision_choice": runtime.describe_precision(),
        "channels_last": runtime.memory_format == torch.channels_last,
        **dict(compile=compile_model, cuda_graphs=cuda_graphs, steps=steps),
        **{"ms_per_step": 1000 * seconds, "images_per_s": batch_size / seconds, "first_step_s": first_step_s},
        "augment_ms_per_step": 1000 * augment_seconds,
        # The augmentation is timed alone, eagerly; a graphed step replays it inside its graph, faster: no share.
        "augment_fraction": None if cuda_graphs else augment_seconds / seconds,
        **utilization,
        memory_key: memory,
    }
    result["compare"] = {
        peer: bench_peer(peer, backbone, width, image_size, images, runtime, steps, warmup, result["images_per_s"])
        for peer in compare
    }
    return result


def _check_options(steps: int, batch_size: int, compare: tuple[str, ...]) -> None:
    if steps < 1 or batch_size < 2:
        raise UserError("--steps must be ≥ 1 and --batch-size ≥ 2")
    unknown = [p for p in compare if p not in PEERS]
    if unknown:
        raise UserError(f"--compare: unknown peer '{unknown[0]}'; choose from {', '.join(PEERS)}")


def _runtime(device: str, precision: str, channels_last: bool | None, cuda_graphs: bool) -> Runtime:
    runtime = Runtime.resolve(resolve_device(device), precision, channels_last)
    runtime.prepare()
    if cuda_graphs and runtime.device.type != "cuda":
        raise UserError(f"--cuda-graphs: CUDA graphs need a CUDA device; this bench runs on {runtime.device.type}")
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    return runtime


def _utilization(flops_per_step: float | None, batch_size: int, seconds: float, dev, runtime: Runtime) -> dict:
    """FLOPs per image, the matmul/convolution peak measured here, and the share of it the step achieved."""
    peak, peak_kind = peak_flops(dev, runtime.amp_dtype or torch.float32)
    result = {
        "flops_per_image": flops_per_step / batch_size if flops_per_step else None,
        "peak_flops": peak,
        "peak_kind": peak_kind,
    }
    if flops_per_step:
        result["achieved_flops"] = flops_per_step / seconds
        result["utilization"] = result["achieved_flops"] / peak
        if result["utilization"] > 1:
            result["utilization_note"] = (
                "above 100%: the step ran faster than the best matmul and convolution measured here, so the "
                "measured peak is below the hardware's (another kernel, or clocks that rose during the step)"
            )
    return result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"cpu ({torch.get_num_threads()} threads)"


def bench_peer(
    peer: str,
    backbone: str,
    width: float,
    image_size: int,
    images: torch.Tensor,
    runtime: Runtime,
    steps: int,
    warmup: int,
    ours_images_per_s: float,
) -> dict:
    try:
        step = peers.STEPS[peer](backbone, width, image_size, images, runtime.amp_dtype)
    except ImportError as error:
        return {"skipped": f"not installed ({error.name}); pip install 'byol[bench]'"}
    seconds = statistics.median(time_steps(step, runtime.device, steps, warmup))
    images_per_s = len(images) / seconds
    return {
        "images_per_s": images_per_s,
        "ms_per_step": 1000 * seconds,
        "ours_over_peer": ours_images_per_s / images_per_s,
    }


def format_result(result: dict) -> str:
    def fmt(value, scale=1.0, digits=1, unit=""):
        return "–" if value is None else f"{value / scale:.{digits}f}{unit}"

    memory_key = "peak_cuda_memory_mb" if "peak_cuda_memory_mb" in result else "peak_rss_mb"
    # --width scales only our ResNets; a library model is built as its library defines it
    width = "" if result["backbone"].startswith(zoo.PREFIXES) else f" ×{result['width']}"
    fraction = result.get("augment_fraction")  # None for a graphed step, which replays it in its graph
    augment_share = f"({100 * fraction:.1f}%)" if fraction is not None else "(timed alone, eagerly)"
    lines = [
        f"device       {result['device']}",
        f"model        {result['backbone']}{width}, "
        f"{result['image_size']} px, batch {result['batch_size']}, "
        f"{result['precision']}{', channels_last' if result['channels_last'] else ''}"
        f"{', compiled' if result['compile'] else ''}{', CUDA graph' if result.get('cuda_graphs') else ''}",
        f"precision    {result['precision_choice']}",
        f"step         {fmt(result['ms_per_step'])} ms  ({fmt(result['images_per_s'])} images/s)",
        f"first step   {fmt(result.get('first_step_s'), 1, 1, ' s')}"
        + (" (compiling, or reading the compile cache)" if result["compile"] else ""),
        f"augment      {fmt(result['augment_ms_per_step'])} ms per step {augment_share}",
        f"FLOPs/image  {fmt(result['flops_per_image'], 1e9, 2, ' GFLOP')}",
        f"achieved     {fmt(result.get('achieved_flops'), 1e9, 1, ' GFLOP/s')} of a measured peak "
        f"{fmt(result['peak_flops'], 1e9, 1, ' GFLOP/s')} ({result['peak_kind']}): utilization "
        f"{fmt(100 * result['utilization'] if result.get('utilization') else None, 1, 1, '%')}"
        + (f" — {result['utilization_note']}" if "utilization_note" in result else ""),
        f"memory       {fmt(result[memory_key], 1, 0, ' MB')} ({memory_key})",
    ]
    for peer, peer_result in result["compare"].items():
        if "skipped" in peer_result:
            lines.append(f"vs {peer:<10} skipped: {peer_result['skipped']}")
        else:
            lines.append(
                f"vs {peer:<10} {peer_result['images_per_s']:.1f} images/s: ours is "
                f"{peer_result['ours_over_peer']:.2f}× theirs"
            )
    return "\n".join(lines)
