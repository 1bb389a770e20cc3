"""The `checks` step: GPU readiness figures for byol. No project file changes; the what-ifs are monkeypatches
in this process. Each section is guarded (a failure is recorded with its traceback and the next one runs):

  env        torch / CUDA / cuDNN versions and flags
  ceilings   bf16 matmul 8192³ and a 1 GiB device copy, and byol.bench.peak_flops's own figure
  syncs      host-device synchronisations per training step, by file:line (torch.cuda.set_sync_debug_mode)
  profile    one profiled window of steps: kernels per step, GPU-busy fraction, time by kernel family
  phases     augment / forward+backward / LARS / EMA / probe / whole step, each timed alone
  whatif     the old ways against today's defaults: nonzero masking, per-parameter LARS, cudnn.benchmark off,
             channels_last off, lerp EMA (whatif.py)
  parity     CPU vs CUDA on the deterministic augment ops and on one fp32 loss; bf16 vs fp32 loss (parity.py)
  data       Fashion-MNIST BatchStream (pinned) throughput, with and without the copy; on-device indexing
  decode     folder path: decode_image per core, PIL draft() on a large JPEG, torchvision decode_jpeg on CUDA
(the SyncBatchNorm variants and CUDA graphs run in the graphs step's process: graphs.py, syncbn.py)

    python -m benchmarks.gpu_check.measure.checks --device cuda --out checks.json [--trace t.json.gz] [--fmnist DIR]
    python -m benchmarks.gpu_check.measure.checks --device cpu --small --out checks.json     (a dry run)
On a CPU the sections run at toy sizes (parity compares the CPU with itself): their code runs, their figures
mean nothing.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import torch

import byol
from byol.probes.collapse import collapse_metrics
from byol.runtime.rng import augmentation_seed
from byol.training.config import TrainConfig
from byol.training.monitor import Monitor

from . import data_path, parity, whatif
from .common import (
    Target,
    count_syncs,
    forward_backward,
    free_memory,
    make_step,
    median_s,
    ms,
    parse_args,
    per_s,
    run_sections,
    sync,
    target,
    views,
)
from .profiling import export_trace, profile_steps

ARGS = SimpleNamespace(trace="", fmnist="")


def env(t: Target) -> dict:
    info = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "python": sys.version.split()[0],
        "byol_file": byol.__file__,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark_default": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception as error:
        info["torchvision"] = f"import failed: {error}"
    if t.cuda:
        props = torch.cuda.get_device_properties(t.device)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            l2_mb=round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
        )
    return info


def seconds_per_call(t: Target, fn, reps: int = 10) -> float:
    """CUDA events around `reps` calls after 2 untimed ones (the host clock on a CPU)."""
    for _ in range(2):
        fn()
    if not t.cuda:
        return median_s(t, fn, reps=reps, warmup=0)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync(t)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    sync(t)
    return start.elapsed_time(end) / 1e3 / reps


def matmul_tflops(t: Target, n: int) -> float:
    a, b = (torch.randn(n, n, device=t.device, dtype=torch.bfloat16) for _ in range(2))
    return round(2 * n**3 / seconds_per_call(t, lambda: a @ b) / 1e12, 3)


def copy_tb_s(t: Target, numel: int) -> float:
    """Device-to-device copy of `numel` int16, counting bytes read and written."""
    x = torch.empty(numel, dtype=torch.int16, device=t.device)
    x.random_()
    y = torch.empty_like(x)
    return round(2 * numel * 2 / seconds_per_call(t, lambda: y.copy_(x)) / 1e12, 3)


def ceilings(t: Target) -> dict:
    from byol.bench import peak_flops

    n = 256 if t.small else 8192
    out = {f"matmul_bf16_{n}_tflops": matmul_tflops(t, n)}
    out["d2d_copy_tb_s_read_plus_write"] = copy_tb_s(t, 2**20 if t.small else 2**29)  # 1 GiB on a GPU
    free_memory(t)
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        rate, kind = peak_flops(t.device, dtype, seconds=0.2 if t.small else 1.0)
        out[f"byol_bench_peak_{name}_tflops"], out[f"byol_bench_peak_{name}_kind"] = round(rate / 1e12, 3), kind
    return out


def monitor_for(t: Target, feature_dim: int) -> Monitor:
    cfg = TrainConfig(knn_every=0, online_probe=True, seed=0)  # the real config: new options come with it
    dataset = SimpleNamespace(labels=torch.zeros(10, dtype=torch.long), num_classes=10, load_size=None)
    return Monitor(cfg, dataset, feature_dim, t.size, t.device, total_steps=1000, main=True)


def _step_syncs(t: Target, s: SimpleNamespace) -> dict:
    out = {"augment_both_views": count_syncs(t, lambda: s.augment(s.images)), "training_step": count_syncs(t, s.step)}
    v1, v2 = views(t, s)
    out["forward_backward"] = count_syncs(t, lambda: forward_backward(t, s, v1, v2))
    out["lars_step"] = count_syncs(t, s.optimizer.step)
    out["update_target"] = count_syncs(t, lambda: s.learner.update_target(0.99))
    out["manual_seed_per_step"] = count_syncs(t, lambda: torch.manual_seed(augmentation_seed(0, 5, 0)))
    return out


def _logging_syncs(t: Target, s: SimpleNamespace) -> dict:
    _, outputs = s.step()
    out = {}
    projection, representation = outputs.projections[0], outputs.representations[0]
    out["collapse_metrics_log_step"] = count_syncs(t, lambda: collapse_metrics(projection, representation))
    monitor = monitor_for(t, s.learner.feature_dim)
    labels_cpu = torch.randint(0, 10, (t.batch,))
    out["probe_step_cpu_labels"] = count_syncs(t, lambda: monitor.probe_step(representation, labels_cpu, 3))
    out["log_values"] = count_syncs(t, monitor.log_values)
    # the checkpoint's finite check (Trainer.check_finite: one fused reduction, one bool())
    loss_sum = torch.zeros((), device=t.device)
    params = list(s.learner.parameters())

    def finite_check():
        return bool(torch.isfinite(loss_sum) & torch.stack([torch.isfinite(p).all() for p in params]).all())

    out["checkpoint_finite_check"] = count_syncs(t, finite_check)
    return out


def _fp16_syncs(t: Target) -> dict:
    f16 = make_step(t, fp16=True)
    for _ in range(3):
        f16.step()
    out = {"training_step_fp16_gradscaler": count_syncs(t, f16.step)}
    loss, _ = f16.step()
    out["fp16_loss_finite"] = bool(torch.isfinite(loss).item())
    out["fp16_scale"] = float(f16.scaler.get_scale()) if f16.scaler.is_enabled() else None
    return out


def syncs(t: Target) -> dict:
    s = make_step(t)
    for _ in range(3):
        s.step()
    sync(t)
    out = {"config": t.label, **_step_syncs(t, s), **_logging_syncs(t, s)}
    del s
    out.update(_fp16_syncs(t))
    free_memory(t)
    return out


def profile(t: Target) -> dict:
    s = make_step(t)
    prof, result = profile_steps(t, s.step, t.label)
    if ARGS.trace:
        export_trace(prof, ARGS.trace)
        result["trace"] = os.path.basename(ARGS.trace)
    return result


def _probe_and_collapse_ms(t: Target, s: SimpleNamespace) -> dict:
    monitor = monitor_for(t, s.learner.feature_dim)
    rep = torch.randn(t.batch, s.learner.feature_dim, device=t.device)
    labels = torch.randint(0, 10, (t.batch,))
    proj = torch.randn(t.batch, 256, device=t.device)
    return {
        "probe_step_ms": ms(median_s(t, lambda: monitor.probe_step(rep, labels, 3))),
        "collapse_metrics_ms_per_log_step": ms(median_s(t, lambda: collapse_metrics(proj, rep), reps=5)),
    }


def phases(t: Target) -> dict:
    s = make_step(t)
    for _ in range(3):
        s.step()
    out = {"config": t.label, "whole_step_ms": ms(median_s(t, s.step))}
    out["augment_both_views_ms"] = ms(median_s(t, lambda: s.augment(s.images)))
    v1, v2 = views(t, s)
    out["forward_backward_ms"] = ms(median_s(t, lambda: forward_backward(t, s, v1, v2, set_to_none=False)))

    def forward_only():
        with torch.no_grad(), torch.autocast(t.device.type, dtype=s.amp, enabled=s.amp is not None):
            s.learner(v1, v2)

    out["forward_only_no_grad_ms"] = ms(median_s(t, forward_only))
    out["lars_step_ms"] = ms(median_s(t, s.optimizer.step))
    out["update_target_ms"] = ms(median_s(t, lambda: s.learner.update_target(0.99)))
    out.update(_probe_and_collapse_ms(t, s))
    parts = ("augment_both_views_ms", "forward_backward_ms", "lars_step_ms", "update_target_ms")
    out["sum_of_parts_ms"] = round(sum(out[p] for p in parts), 3)
    out["images_per_s_whole_step"] = per_s(t, out["whole_step_ms"])
    return out


SECTIONS = {
    "env": env,
    "ceilings": ceilings,
    "syncs": syncs,
    "profile": profile,
    "phases": phases,
    "whatif": whatif.whatif,
    "parity": parity.parity,
    "data": lambda t: data_path.data(t, ARGS.fmnist),
    "decode": data_path.decode,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv)
    ARGS.trace, ARGS.fmnist = args.trace, args.fmnist
    t = target(args.device, args.small)
    if t.cuda:
        torch.backends.cudnn.benchmark = True  # as byol train and byol bench set it (device.Runtime.prepare)
    run_sections(SECTIONS, t, args.out, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
