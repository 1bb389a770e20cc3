#!/usr/bin/env bash
# byol's GPU check: one run of under 9 minutes on an H100 or H200 (issue 15's device work).
# Grown from the prepared check the project was given; measures the project as it is now (sync-free
# augmentation and multi-tensor LARS are the defaults, so the what-ifs measure the old ways against them).
#
# What it does, each step guarded by a timeout and by the time left (BUDGET_S), so a slow or failing
# step is reported and the next one still runs; everything lands in $OUT (8 files at most):
#   setup    the image's python3 (torch preinstalled there, never reinstalled); `pip install -e .` with
#            --no-deps --no-build-isolation --no-index (offline); peers' wheels from .whl/ if present
#   checks   cuda_checks.py (embedded below): matmul/copy ceilings, host syncs per step by file:line,
#            a profiled window (GPU-busy fraction, kernels per step, time by kernel family), phase times,
#            what-ifs (the old nonzero masking, the per-parameter LARS loop, cudnn.benchmark off,
#            channels_last off, torch's SyncBatchNorm against ours),
#            CPU-vs-CUDA parity, data-path and JPEG-decode rates, SyncBatchNorm's kernel path
#   bench    byol bench --device cuda --precision bf16: the gpu preset's model (R18, 1 ch, 28 px, 512),
#            R18 CIFAR stem 32 px batch 512 and R50 224 px batch 128, both --compare byol-pytorch,lightly
#   train    byol train --preset gpu --device cuda on Fashion-MNIST, epochs sized from the bench to fill
#            TRAIN_S seconds (SIGTERM at the limit: byol checkpoints and stops), peak CUDA memory
#   eval     byol eval --checkpoint <run>/checkpoint.pt --device cuda
#   graphs   byol bench --cuda-graphs (R18/32/512 with byol-pytorch, R50/224/128; the gpu preset's model when
#            training), the eager and graphed step back to back with the graphed profile, and the
#            SyncBatchNorm variants (cuda_checks.py --only env,graphs,syncbn)
#   compile  byol bench ... --compile for R18/32/512 (capped to leave the cuda tests 110 s), then after the
#            tests R18 with --compile --cuda-graphs and R50/224/128 --compile
#   tests    pytest -m cuda (tests/test_cuda.py, tests/test_graphs.py), then the tests that reach CUDA through
#            --device auto
# (the order they run in: setup, checks, bench, graphs, train, eval, compile R18, tests -m cuda, the other
# compiles, the --device auto tests)
#
# What is left to measure after the 2026-11-26 H100 run (docs/performance.md "GPU"), in one call:
#   STEPS=setup,graphs,tests,compile BUDGET_S=530 bash benchmarks/gpu_check.sh
#
# Before starting it, on a machine with the package registries (the GPU machine has no network):
#   Fashion-MNIST:  mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/     (30 MB; /.data/ is ignored)
#   peers (opt.):   the wheels of byol-pytorch, beartype and lightly in .whl/ (py3-none-any; /.whl/ is ignored):
#                   pip download --no-deps -d .whl byol-pytorch==0.9.1 beartype==0.23.1 lightly==1.6.0
#   then, on the GPU machine, from the repository root, with .data and .whl brought along:
#                   bash benchmarks/gpu_check.sh       (under 9 minutes; results land in $OUT)
# From a checkout that is not the project, bring a copy of the project too and say where it is:
# PROJECT=path/to/project bash gpu_check.sh.
#
# Environment knobs: BUDGET_S (default 510: the script's own deadline), TRAIN_S (120), TRAIN_GRAPHS=1 (train
# with --cuda-graphs), STEPS (comma list,
# default setup,checks,bench,graphs,train,eval,tests,compile), PROJECT, FMNIST, WHL, PY, DRY=1 (a CPU dry run of
# the plumbing at toy sizes, for checking this script without a GPU).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false
START=$SECONDS
BUDGET_S=${BUDGET_S:-510}
TRAIN_S=${TRAIN_S:-120}
STEPS=${STEPS:-setup,checks,bench,graphs,train,eval,tests,compile}
DRY=${DRY:-0}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$PWD/device-check-out}
WORK=${WORK:-/tmp/byol-device-check}
mkdir -p "$OUT"
rm -rf "$WORK"; mkdir -p "$WORK"
SKIPPED=""
RESULTS=""

remaining() { echo $(( BUDGET_S - (SECONDS - START) )); }
want() { [[ ",$STEPS," == *",$1,"* ]]; }
# step NAME NEED_S CAP_S command... : run it if at least NEED_S seconds of the budget are left, under a timeout
# of min(CAP_S, left - 5) (SIGTERM, then SIGKILL 20 s later); a shell function gets the limit as STEP_LIMIT
step() {
    local name=$1 need=$2 cap=$3; shift 3
    local left; left=$(remaining)
    if (( left < need )); then
        echo "--- SKIP $name: ${left}s left of the ${BUDGET_S}s budget, it needs ${need}s"
        SKIPPED="$SKIPPED $name"; return 0
    fi
    local limit=$(( cap < left - 5 ? cap : left - 5 ))
    echo; echo "=== $name: start $(date -u +%T), timeout ${limit}s, ${left}s left"
    local s0=$SECONDS rc
    if [ "$(type -t "$1")" = function ]; then
        STEP_LIMIT=$limit "$@"; rc=$?
    else
        timeout -k 20 "$limit" "$@"; rc=$?
    fi
    echo "=== $name: rc=$rc after $(( SECONDS - s0 ))s"
    RESULTS="$RESULTS $name:rc=$rc:$(( SECONDS - s0 ))s"
    return 0
}

main() {
echo "byol device check $(date -u +%FT%TZ) budget ${BUDGET_S}s train ${TRAIN_S}s steps ${STEPS} dry ${DRY}"
# ---------------------------------------------------------------- where things are
if [ -z "${PROJECT:-}" ]; then
    for d in . "$SCRIPT_DIR" "$SCRIPT_DIR/.." "$SCRIPT_DIR/main" .gpu/main gpu/main main; do
        if [ -f "$d/byol/train.py" ] && [ -f "$d/pyproject.toml" ]; then PROJECT=$d; break; fi
    done
fi
if [ -z "${PROJECT:-}" ]; then echo "FATAL: no byol project here (set PROJECT=DIR)"; return 2; fi
PROJECT=$(cd "$PROJECT" && pwd)
echo "project: $PROJECT ($(cd "$PROJECT" && git log -1 --format='%h %s' 2>/dev/null || echo 'no git'))"
FM=""
for d in "${FMNIST:-}" "$PROJECT/.data/fashion-mnist" "$PWD/.data/fashion-mnist" "$SCRIPT_DIR/fashion-mnist" \
         "$SCRIPT_DIR/.data/fashion-mnist" /usr/share/datasets/fashion-mnist "${HOME:-/root}/.cache/byol/fashion-mnist"; do
    if [ -n "$d" ] && { [ -f "$d/train-images-idx3-ubyte.gz" ] || [ -f "$d/train-images-idx3-ubyte" ]; }; then
        FM=$(cd "$d" && pwd); break
    fi
done
echo "fashion-mnist: ${FM:-NOT FOUND (train/eval steps will be skipped; bring .data/fashion-mnist along)}"
if [ -n "$FM" ] && [ ! -e /usr/share/datasets/fashion-mnist ]; then   # the tests look only there
    mkdir -p /usr/share/datasets 2>/dev/null && ln -s "$FM" /usr/share/datasets/fashion-mnist 2>/dev/null \
        && echo "linked $FM to /usr/share/datasets/fashion-mnist (the Debian path the smoke test needs)"
fi
WHL_DIR=""
for d in "${WHL:-}" "$PROJECT/.whl" "$PWD/.whl" "$SCRIPT_DIR/.whl" "$SCRIPT_DIR/../.whl"; do
    if [ -n "$d" ] && ls "$d"/*.whl >/dev/null 2>&1; then WHL_DIR=$(cd "$d" && pwd); break; fi
done

# ---------------------------------------------------------------- python, torch, byol
PY=${PY:-python3}
if ! "$PY" -c "import torch" 2>/dev/null && [ -x /opt/torch/.venv/bin/python3 ]; then PY=/opt/torch/.venv/bin/python3; fi
echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"
if ! "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"; then
    echo "FATAL: no torch/torchvision in $PY. A CUDA torch wheel (~1 GB with its nvidia-* wheels) is too big"
    echo "to bring along: this check needs the GPU machine's preinstalled torch."
    return 2
fi
DEVICE=cuda
if [ "$DRY" = 1 ]; then DEVICE=cpu; fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "FATAL: torch sees no CUDA device"; return 2
fi
echo; echo "=== setup $(date -u +%T)"
if want setup && [ "$DRY" != 1 ]; then   # the image's torch stays: --no-deps, and no index to fetch from
    (cd "$PROJECT" && timeout 120 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -3) || true
fi
if ! (cd /tmp && "$PY" -c "import byol, sys; sys.exit(0 if byol.__file__.startswith('$PROJECT/') else 1)" 2>/dev/null); then
    echo "byol is not importable from $PROJECT after the install: using PYTHONPATH=$PROJECT"
    export PYTHONPATH="$PROJECT${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -n "$WHL_DIR" ]; then
    echo "peers' wheels from $WHL_DIR: $(cd "$WHL_DIR" && ls *.whl | tr '\n' ' ')"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        "$WHL_DIR"/*.whl 2>&1 | tail -3
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no .whl folder: --compare peers are reported as skipped (bring the byol-pytorch, beartype and lightly wheels in .whl/)"
fi
(cd /tmp && timeout 90 "$PY" - <<'PYEOF'
import importlib
for name in ("byol", "byol_pytorch", "lightly", "numpy", "PIL", "yaml", "safetensors", "tqdm", "tensorboard", "matplotlib", "pytest", "hypothesis"):
    try:
        module = importlib.import_module(name)
        print(f"  import {name:<13} ok  {getattr(module, '__version__', '')}  {getattr(module, '__file__', '')}")
    except Exception as error:  # noqa: BLE001
        print(f"  import {name:<13} FAILED {type(error).__name__}: {error}")
PYEOF
)
BYOL=("$PY" -m byol)
echo "cpus: $(nproc); memory: $(free -g 2>/dev/null | awk '/Mem:/{print $2" GiB"}'); disk /tmp: $(df -h /tmp | awk 'NR==2{print $4" free"}')"

# ---------------------------------------------------------------- nvidia-smi (read-only queries) and a 2 Hz sampler
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm,clocks.sm,pstate,persistence_mode,compute_mode,mig.mode.current --format=csv
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw,clocks.sm,temperature.gpu \
        --format=csv -lms 500 > "$OUT/smi.csv" 2>/dev/null &
    SMI_PID=$!
    trap 'kill "$SMI_PID" 2>/dev/null' EXIT
fi

# ---------------------------------------------------------------- embedded helpers
cat > "$WORK/cuda_checks.py" <<'PYEOF'
#!/usr/bin/env python3
"""GPU readiness checks for byol (no project file is changed; what-ifs are monkeypatches in this process).

Sections, each guarded (a failure is recorded and the next section runs):
  env        torch / CUDA / cuDNN versions and flags
  ceilings   bf16 matmul 8192^3 and a 1 GiB device copy (CUDA events), and byol.bench.peak_flops's own figure
  syncs      host-device synchronisations per training step, by file:line (torch.cuda.set_sync_debug_mode)
  profile    one profiled window of steps: kernels per step, GPU-busy fraction, time by kernel family
  phases     augment / forward+backward / LARS / EMA / probe / whole step, each timed alone
  whatif     the old ways against today's defaults: nonzero masking, per-parameter LARS, cudnn.benchmark off,
             channels_last off, lerp EMA
  parity     CPU vs CUDA on the deterministic augment ops and on one fp32 loss; bf16 vs fp32 loss
  data       Fashion-MNIST BatchStream (pinned) throughput, with and without the copy; on-device indexing
  decode     folder path: byol.folders.decode_image per core, PIL draft() on a large JPEG, torchvision decode_jpeg on CUDA
  syncbn     torch's SyncBatchNorm kernel path (bf16, channels_last) in a 1-rank NCCL group, with its sync count
Run: python cuda_checks.py --device cuda --out cuda_checks.json [--trace trace.json.gz] [--fmnist DIR]
     python cuda_checks.py --device cpu --small        (a dry run of the code paths on a CPU)
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cuda")
parser.add_argument("--out", default="cuda_checks.json")
parser.add_argument("--trace", default="")
parser.add_argument("--fmnist", default="")
parser.add_argument("--small", action="store_true", help="tiny sizes, for a CPU dry run")
parser.add_argument("--only", default="", help="comma list of sections")
args = parser.parse_args()

DEV = torch.device(args.device)
CUDA = DEV.type == "cuda"
R: dict = {"device_arg": str(DEV), "small": args.small}
if os.path.exists(args.out):  # a second run (--only ...) adds its sections to the first's file
    try:
        with open(args.out) as previous:
            R = {**json.load(previous), **R}
    except ValueError:
        pass
ONLY = {s.strip() for s in args.only.split(",") if s.strip()}
T0 = time.perf_counter()

import byol  # noqa: E402
from byol import augment as aug_mod  # noqa: E402
from byol.augment import BYOLAugment  # noqa: E402
from byol.config import TrainConfig  # noqa: E402
from byol.rng import augmentation_seed  # noqa: E402
from byol.trainer import build_learner, optimizer_for, training_step  # noqa: E402

R["byol_file"] = byol.__file__
if CUDA:
    torch.backends.cudnn.benchmark = True  # as byol train and byol bench set it (device.Runtime.prepare)

if args.small:
    BACKBONE, WIDTH, SIZE, CH, BATCH = "resnet18", 0.125, 16, 3, 16
else:
    BACKBONE, WIDTH, SIZE, CH, BATCH = "resnet18", 1.0, 32, 3, 512
AMP = torch.bfloat16 if CUDA else None
CL = torch.channels_last


def save():
    R["elapsed_s"] = round(time.perf_counter() - T0, 1)
    with open(args.out, "w") as f:
        json.dump(R, f, indent=1, default=str)


def say(msg):
    print(f"[checks {time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def section(name):
    def run(fn):
        if ONLY and name not in ONLY:
            return fn
        start = time.perf_counter()
        try:
            R[name] = fn()
        except Exception as error:  # noqa: BLE001 - record and go on
            R[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
            say(f"{name}: FAILED {type(error).__name__}: {error}")
        else:
            say(f"{name}: done in {time.perf_counter() - start:.1f}s")
        if isinstance(R.get(name), dict):
            R[name]["section_s"] = round(time.perf_counter() - start, 2)
        save()
        return fn
    return run


def sync():
    if CUDA:
        torch.cuda.synchronize()


def median_s(fn, reps=10, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ms(seconds):
    return round(1000 * seconds, 3)


def make_step(channels_last=True, backbone=BACKBONE, width=WIDTH, size=SIZE, channels=CH, batch=BATCH, amp=AMP,
              fp16=False):
    torch.manual_seed(0)
    cfg = TrainConfig(backbone=backbone, width=width, batch_size=batch)
    memory_format = CL if channels_last else torch.contiguous_format
    learner = build_learner(cfg, channels, size).to(DEV).to(memory_format=memory_format)
    optimizer = optimizer_for(cfg, learner)
    for group in optimizer.param_groups:
        group["lr"] = 0.3 * batch / 256
    augment = BYOLAugment(size, (0.5,) * channels, (0.25,) * channels).to(DEV)
    amp_dtype = torch.float16 if fp16 else amp
    scaler = torch.amp.GradScaler(DEV.type, enabled=fp16)
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, device=DEV)

    def step():
        return training_step(learner, augment, optimizer, scaler, images, 0.996, memory_format, amp_dtype)

    return SimpleNamespace(learner=learner, optimizer=optimizer, augment=augment, scaler=scaler, images=images,
                           step=step, memory_format=memory_format, amp=amp_dtype)


# ------------------------------------------------------------------------------------------------ sections


@section("env")
def _env():
    info = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda, "python": sys.version.split()[0],
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cudnn_benchmark_default": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except Exception as error:  # noqa: BLE001
        info["torchvision"] = f"import failed: {error}"
    if CUDA:
        props = torch.cuda.get_device_properties(DEV)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
        info["l2_mb"] = round(getattr(props, "L2_cache_size", 0) / 2**20, 1)
    return info


@section("ceilings")
def _ceilings():
    if not CUDA:
        return {"skipped": "cpu"}
    out = {}
    n = 8192
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync()
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    sync()
    out["matmul_bf16_8192_tflops"] = round(2 * n**3 * 10 / (start.elapsed_time(end) / 1e3) / 1e12, 1)
    del a, b
    x = torch.empty(2**29, dtype=torch.int16, device=DEV)  # 1 GiB
    x.random_()
    y = torch.empty_like(x)
    for _ in range(2):
        y.copy_(x)
    sync()
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    sync()
    out["d2d_copy_tb_s_read_plus_write"] = round(2 * x.numel() * 2 * 10 / (start.elapsed_time(end) / 1e3) / 1e12, 2)
    del x, y
    torch.cuda.empty_cache()
    from byol.bench import peak_flops
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        rate, kind = peak_flops(DEV, dtype, seconds=1.0)
        out[f"byol_bench_peak_{name}_tflops"], out[f"byol_bench_peak_{name}_kind"] = round(rate / 1e12, 1), kind
    return out


def count_syncs(fn):
    """Synchronising CUDA calls made by fn(), grouped by the Python line that made them."""
    if not CUDA:
        fn()
        return {"total": None, "by_line": {}}
    sync()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    hits = [w for w in caught if "synchroniz" in str(w.message).lower()]
    lines = collections.Counter(f"{os.path.relpath(w.filename) if 'byol' in w.filename else os.path.basename(w.filename)}:{w.lineno}"
                                for w in hits)
    return {"total": len(hits), "by_line": dict(lines.most_common(12))}


@section("syncs")
def _syncs():
    out = {}
    s = make_step()
    for _ in range(3):
        s.step()
    sync()
    out["config"] = f"{BACKBONE} x{WIDTH} {SIZE}px {CH}ch batch {BATCH} {s.amp} channels_last"
    out["augment_both_views"] = count_syncs(lambda: s.augment(s.images))
    out["training_step"] = count_syncs(s.step)
    v1, v2 = (v.contiguous(memory_format=CL) for v in s.augment(s.images))

    def fwd_bwd():
        with torch.autocast(DEV.type, dtype=s.amp, enabled=s.amp is not None):
            loss = s.learner(v1, v2)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    out["forward_backward"] = count_syncs(fwd_bwd)
    out["lars_step"] = count_syncs(s.optimizer.step)
    out["update_target"] = count_syncs(lambda: s.learner.update_target(0.99))
    out["manual_seed_per_step"] = count_syncs(lambda: torch.manual_seed(augmentation_seed(0, 5, 0)))
    from byol.collapse import collapse_metrics
    _, outputs = s.step()
    out["collapse_metrics_log_step"] = count_syncs(lambda: collapse_metrics(outputs.projections[0],
                                                                            outputs.representations[0]))
    from byol.monitor import Monitor
    cfg = TrainConfig(knn_every=0, online_probe=True, seed=0)  # the real config: new options come with it
    dataset = SimpleNamespace(labels=torch.zeros(10, dtype=torch.long), num_classes=10, load_size=None)
    monitor = Monitor(cfg, dataset, s.learner.feature_dim, SIZE, DEV, total_steps=1000, main=True)
    labels_cpu = torch.randint(0, 10, (BATCH,))
    out["probe_step_cpu_labels"] = count_syncs(lambda: monitor.probe_step(outputs.representations[0], labels_cpu, 3))
    out["log_values"] = count_syncs(monitor.log_values)
    # the checkpoint's finite check (Trainer.check_finite: one fused reduction, one bool())
    loss_sum = torch.zeros((), device=DEV)
    out["checkpoint_finite_check"] = count_syncs(
        lambda: bool(torch.isfinite(loss_sum) & torch.stack([torch.isfinite(p).all() for p in s.learner.parameters()]).all()))
    del s
    f16 = make_step(fp16=True)
    for _ in range(3):
        f16.step()
    out["training_step_fp16_gradscaler"] = count_syncs(f16.step)
    loss, _ = f16.step()
    out["fp16_loss_finite"] = bool(torch.isfinite(loss).item())
    out["fp16_scale"] = float(f16.scaler.get_scale()) if f16.scaler.is_enabled() else None
    del f16
    if CUDA:
        torch.cuda.empty_cache()
    return out


KERNEL_FAMILIES = (
    ("conv/gemm", ("conv", "cudnn", "xmma", "implicit", "cutlass", "gemm", "wgrad", "dgrad", "sm90", "sm80", "nchwtonhwc", "nhwc")),
    ("batchnorm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford")),
    ("foreach(optim/ema)", ("foreach", "multi_tensor", "multitensor")),
    ("grid_sample(augment)", ("grid_sampler",)),
    ("index/nonzero", ("nonzero", "index", "scatter", "gather", "cub::", "select")),
    ("reduction", ("reduce", "norm_kernel", "sum_kernel")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "where", "clamp", "copy", "fill")),
)


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in KERNEL_FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def profile_steps(step, label, steps=3):
    """GPU-busy time, kernels and time by kernel family over `steps` calls of `step` (after 5 untimed)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        step()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    intervals = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy, cur_s, cur_e = 0.0, None, None
    for a, b in intervals:
        if cur_e is None or a > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = a, b
        else:
            cur_e = max(cur_e, b)
    if cur_e is not None:
        busy += cur_e - cur_s
    span = (intervals[-1][1] - intervals[0][0]) if intervals else 0.0
    by_family = collections.defaultdict(float)
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for e in kernels:
        d = e.time_range.end - e.time_range.start
        by_family[family(e.name)] += d
        by_name[e.name[:90]][0] += 1
        by_name[e.name[:90]][1] += d
    total = sum(by_family.values()) or 1.0
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:15]
    return prof, {"config": label, "steps": steps,
            "wall_ms_per_step_profiled": ms(wall / steps),
            "gpu_kernels_per_step": round(len(kernels) / steps),
            "gpu_busy_ms_per_step": round(busy / 1e3 / steps, 3),
            "gpu_busy_fraction_of_kernel_span": round(busy / span, 3) if span else None,
            "gpu_busy_fraction_of_wall": round(busy / 1e6 / wall, 3),
            "kernel_time_share_by_family": {k: round(v / total, 3) for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": n, "calls_per_step": round(c / steps, 1), "ms_per_step": round(t / 1e3 / steps, 3)}
                            for n, (c, t) in top]}


@section("profile")
def _profile():
    if not CUDA:
        return {"skipped": "cpu"}
    s = make_step()
    prof, result = profile_steps(s.step, f"{BACKBONE} {SIZE}px batch {BATCH} bf16 channels_last")
    if args.trace:
        # the uncompressed trace is written outside $OUT (only 8 files come back from there)
        tmp = os.path.join(tempfile.gettempdir(), "byol-trace.json") if args.trace.endswith(".gz") else args.trace
        prof.export_chrome_trace(tmp)
        if args.trace.endswith(".gz"):
            with open(tmp, "rb") as src, gzip.open(args.trace, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
            os.unlink(tmp)
    return result


@section("graphs")
def _graphs():
    """--cuda-graphs (byol/graphs.py): the same step as `profile`, its augmentation, forward and backward
    replayed as one CUDA graph; whole-step time eager and graphed, back to back, and the graphed profile."""
    if not CUDA:
        return {"skipped": "cpu"}
    from byol.graphs import GraphedStep

    s = make_step()
    graphed = GraphedStep(s.learner, s.augment, s.optimizer, s.scaler, s.memory_format, s.amp)
    replay = lambda: graphed(s.images, 0.996)  # noqa: E731
    out = {"eager_whole_step_ms": ms(median_s(s.step, reps=20, warmup=3)),
           "graphed_whole_step_ms": ms(median_s(replay, reps=20, warmup=GraphedStep.WARMUP_STEPS + 2))}
    out["speedup"] = round(out["eager_whole_step_ms"] / out["graphed_whole_step_ms"], 3)
    out["images_per_s_graphed"] = round(BATCH / (out["graphed_whole_step_ms"] / 1e3), 1)
    _, out["profile"] = profile_steps(replay, f"{BACKBONE} {SIZE}px batch {BATCH} bf16 channels_last, CUDA graph")
    out["captures"] = graphed.captures
    return out


@section("phases")
def _phases():
    s = make_step()
    for _ in range(3):
        s.step()
    out = {"config": f"{BACKBONE} x{WIDTH} {SIZE}px batch {BATCH} {s.amp} channels_last"}
    out["whole_step_ms"] = ms(median_s(s.step))
    out["augment_both_views_ms"] = ms(median_s(lambda: s.augment(s.images)))
    v1, v2 = (v.contiguous(memory_format=CL) for v in s.augment(s.images))

    def fwd_bwd():
        with torch.autocast(DEV.type, dtype=s.amp, enabled=s.amp is not None):
            loss = s.learner(v1, v2)
        s.optimizer.zero_grad(set_to_none=False)
        loss.backward()

    out["forward_backward_ms"] = ms(median_s(fwd_bwd))

    def fwd_only():
        with torch.no_grad(), torch.autocast(DEV.type, dtype=s.amp, enabled=s.amp is not None):
            s.learner(v1, v2)

    out["forward_only_no_grad_ms"] = ms(median_s(fwd_only))
    out["lars_step_ms"] = ms(median_s(s.optimizer.step))
    out["update_target_ms"] = ms(median_s(lambda: s.learner.update_target(0.99)))
    from byol.monitor import Monitor
    cfg = TrainConfig(knn_every=0, online_probe=True, seed=0)  # the real config: new options come with it
    dataset = SimpleNamespace(labels=torch.zeros(10, dtype=torch.long), num_classes=10, load_size=None)
    monitor = Monitor(cfg, dataset, s.learner.feature_dim, SIZE, DEV, total_steps=1000, main=True)
    rep = torch.randn(BATCH, s.learner.feature_dim, device=DEV)
    labels = torch.randint(0, 10, (BATCH,))
    out["probe_step_ms"] = ms(median_s(lambda: monitor.probe_step(rep, labels, 3)))
    from byol.collapse import collapse_metrics
    proj = torch.randn(BATCH, 256, device=DEV)
    out["collapse_metrics_ms_per_log_step"] = ms(median_s(lambda: collapse_metrics(proj, rep), reps=5))
    parts = ("augment_both_views_ms", "forward_backward_ms", "lars_step_ms", "update_target_ms")
    out["sum_of_parts_ms"] = round(sum(out[p] for p in parts), 3)
    out["images_per_s_whole_step"] = round(BATCH / (out["whole_step_ms"] / 1e3), 1)
    return out


def lars_loop_step(optimizer):
    """The update byol.optim.LARS made before it went multi-tensor: one parameter at a time."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    grad = grad * torch.where((pn > 0) & (gn > 0), group["trust_coefficient"] * pn / gn,
                                              torch.ones_like(pn))
                buf = optimizer.state[p]["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(grad, alpha=group["lr"])
                p.sub_(buf)


@section("whatif")
def _whatif():
    out = {"config": f"{BACKBONE} x{WIDTH} {SIZE}px batch {BATCH} {AMP}"}
    s = make_step()
    for _ in range(3):
        s.step()
    out["baseline_step_ms"] = ms(median_s(s.step))
    out["augment_default_ms"] = ms(median_s(lambda: s.augment(s.images)))
    torch.manual_seed(7)
    ref = s.augment(s.images)
    original = aug_mod._apply_to
    aug_mod._apply_to = aug_mod._apply_to_selected  # the old masking: index by nonzero()
    try:
        torch.manual_seed(7)
        old = s.augment(s.images)
        out["augment_nonzero_max_abs_diff_vs_default"] = max(float((a - b).abs().max()) for a, b in zip(ref, old))
        out["augment_nonzero_syncs"] = count_syncs(lambda: s.augment(s.images))["total"]
        out["augment_nonzero_ms"] = ms(median_s(lambda: s.augment(s.images)))
        out["step_with_augment_nonzero_ms"] = ms(median_s(s.step))
    finally:
        aug_mod._apply_to = original
    out["augment_default_syncs"] = count_syncs(lambda: s.augment(s.images))["total"]
    v1, v2 = (v.contiguous(memory_format=CL) for v in s.augment(s.images))
    with torch.autocast(DEV.type, dtype=s.amp, enabled=s.amp is not None):
        loss = s.learner(v1, v2)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in s.optimizer.param_groups for p in g["params"]]
    saved_p = [p.detach().clone() for p in params]
    saved_b = {p: s.optimizer.state[p]["momentum_buffer"].clone() for p in params if p in s.optimizer.state}
    s.optimizer.step()
    after_default = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, saved_p):
            p.copy_(v)
        for p, b in saved_b.items():
            s.optimizer.state[p]["momentum_buffer"].copy_(b)
    lars_loop_step(s.optimizer)
    rel = max(float((p.detach() - r).norm() / r.norm().clamp_min(1e-30)) for p, r in zip(params, after_default))
    out["lars_loop_max_rel_diff_vs_foreach"] = rel
    out["lars_foreach_ms"] = ms(median_s(s.optimizer.step))
    out["lars_loop_ms"] = ms(median_s(lambda: lars_loop_step(s.optimizer)))
    target, online = s.learner.target_parameters(), s.learner.online_parameters()
    out["ema_mul_add_ms"] = ms(median_s(lambda: s.learner.update_target(0.99)))
    out["ema_lerp_ms"] = ms(median_s(lambda: torch._foreach_lerp_(target, online, 0.01)))
    if CUDA:
        torch.backends.cudnn.benchmark = False
        try:
            for _ in range(3):
                s.step()
            out["step_cudnn_benchmark_off_ms"] = ms(median_s(s.step))
        finally:
            torch.backends.cudnn.benchmark = True
    # all the old ways together: nonzero masking, per-parameter LARS, no cudnn.benchmark
    original_step = s.optimizer.step
    aug_mod._apply_to = aug_mod._apply_to_selected
    s.optimizer.step = lambda closure=None: lars_loop_step(s.optimizer)
    torch.backends.cudnn.benchmark = False
    try:
        for _ in range(3):
            s.step()
        out["step_all_old_ways_ms"] = ms(median_s(s.step))
    finally:
        aug_mod._apply_to = original
        s.optimizer.step = original_step
        torch.backends.cudnn.benchmark = CUDA
    del s
    c = make_step(channels_last=False)
    for _ in range(3):
        c.step()
    out["step_contiguous_format_ms"] = ms(median_s(c.step))
    del c
    for key in ("baseline_step_ms", "step_with_augment_nonzero_ms", "step_cudnn_benchmark_off_ms",
                "step_all_old_ways_ms", "step_contiguous_format_ms"):
        if key in out:
            out[key.replace("_ms", "_images_per_s")] = round(BATCH / (out[key] / 1e3), 1)
    if CUDA:
        torch.cuda.empty_cache()
    return out


@section("parity")
def _parity():
    if not CUDA:
        return {"skipped": "cpu"}
    out = {}
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 3, 32, 32, generator=g)
    factor = torch.rand(64, generator=g) * 0.8 + 0.6
    delta = torch.rand(64, generator=g) * 0.2 - 0.1
    sigma = torch.rand(64, generator=g) * 1.9 + 0.1

    def diff(fn, *params):
        a = fn(x, *params)
        b = fn(x.to(DEV), *(p.to(DEV) for p in params)).cpu()
        return float((a - b).abs().max())

    out["adjust_hue"] = diff(aug_mod.adjust_hue, delta)
    out["adjust_saturation"] = diff(aug_mod.adjust_saturation, factor)
    out["adjust_contrast"] = diff(aug_mod.adjust_contrast, factor)
    out["adjust_brightness"] = diff(aug_mod.adjust_brightness, delta)
    out["gaussian_blur"] = diff(aug_mod.gaussian_blur, sigma)
    out["to_grayscale"] = diff(aug_mod.to_grayscale)
    out["solarize"] = diff(aug_mod.solarize)
    theta = torch.tensor([[0.6, 0.0, 0.1], [0.0, 0.7, -0.2]]).expand(64, 2, 3).contiguous()

    def crop(images, th):
        grid = F.affine_grid(th, [64, 3, 24, 24], align_corners=False)
        return F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)

    out["grid_sample_bicubic"] = diff(crop, theta)
    # one fp32 BYOL loss on the same weights and views, TF32 off, CPU vs CUDA
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.manual_seed(0)
        learner = build_learner(TrainConfig(backbone="resnet18", width=0.5), 3, 32)
        v1, v2 = torch.randn(2, 32, 3, 32, 32, generator=g)
        cpu_loss = float(learner(v1, v2))
        learner_gpu = learner.to(DEV).to(memory_format=CL)
        gv1, gv2 = (v.to(DEV).contiguous(memory_format=CL) for v in (v1, v2))
        gpu_loss = float(learner_gpu(gv1, gv2))
        out["loss_fp32_cpu"], out["loss_fp32_cuda"] = cpu_loss, gpu_loss
        out["loss_fp32_rel_diff"] = abs(cpu_loss - gpu_loss) / abs(cpu_loss)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16_loss = float(learner_gpu(gv1, gv2))
        out["loss_bf16_cuda"] = bf16_loss
        out["loss_bf16_vs_fp32_rel_diff"] = abs(bf16_loss - gpu_loss) / abs(gpu_loss)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    out["max_abs_diff_augment_ops"] = max(v for k, v in out.items() if not k.startswith("loss"))
    return out


@section("data")
def _data():
    from byol.data import BatchStream, ImageDataset, load_fashion_mnist
    out = {}
    try:
        dataset = load_fashion_mnist(args.fmnist or None, "train", download=False)
        out["dataset"] = "fashion-mnist train"
    except Exception as error:  # noqa: BLE001
        out["dataset"] = f"synthetic (fashion-mnist not found: {error})"
        dataset = ImageDataset("synthetic", 1, 28, (0.5,), (0.25,), images=torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8),
                               labels=torch.randint(0, 10, (60000,)))
    batch = 512 if not args.small else 64
    stream = BatchStream(dataset, batch, pin_memory=CUDA)
    for images, labels in stream.epoch(0, 0):   # untimed: first touch of the array, the pinned allocator's cache
        images.to(DEV, non_blocking=True)
    sync()
    start = time.perf_counter()
    n = 0
    for images, labels in stream.epoch(0, 2):
        n += len(images)
    t = time.perf_counter() - start
    out["stream_only_images_per_s"] = round(n / t)
    start = time.perf_counter()
    n = 0
    for images, labels in stream.epoch(0, 1):
        images = images.to(DEV, non_blocking=True)
        labels = labels.to(DEV, non_blocking=True)
        n += len(images)
    sync()
    t = time.perf_counter() - start
    out["stream_plus_copy_images_per_s"] = round(n / t)
    out["per_step_host_ms_at_batch"] = round(1000 * t / max(len(stream), 1), 3)
    gpu_images = dataset.images.to(DEV)
    gpu_labels = dataset.labels.to(DEV)
    out["dataset_bytes_on_device_mb"] = round(gpu_images.numel() / 2**20, 1)
    start = time.perf_counter()
    order = torch.randperm(len(gpu_images), device=DEV)
    n = 0
    for i in range(len(gpu_images) // batch):
        idx = order[i * batch:(i + 1) * batch]
        images, labels = gpu_images[idx], gpu_labels[idx]
        n += batch
    sync()
    out["on_device_indexing_images_per_s"] = round(n / (time.perf_counter() - start))
    return out


def _synthetic_jpegs(folder, count, width, height, seed=0):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        base = (np.sin(xx / (7 + i % 13)) + np.cos(yy / (5 + i % 11))) * 60 + 128
        rgb = np.stack([base, np.roll(base, i, 1), np.roll(base, 2 * i, 0)], axis=2)
        rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"img{i:04d}.jpg")
        Image.fromarray(rgb).save(path, quality=90)
        paths.append(path)
    return paths


@section("decode")
def _decode():
    from pathlib import Path

    from PIL import Image

    from byol.folders import decode_image
    out = {}
    folder = tempfile.mkdtemp(prefix="byol-jpeg-")
    try:
        count = 16 if args.small else 96
        paths = _synthetic_jpegs(folder, count, 500, 375)
        out["jpeg_500x375_kb_mean"] = round(sum(os.path.getsize(p) for p in paths) / len(paths) / 1024, 1)
        for p in paths[:4]:
            decode_image(Path(p), 256)
        start = time.perf_counter()
        for p in paths:
            decode_image(Path(p), 256)
        t = time.perf_counter() - start
        out["pil_decode_resize256_images_per_s_one_core"] = round(len(paths) / t, 1)
        cores = os.cpu_count() or 1
        out["pil_estimate_all_cores_minus_one"] = round(len(paths) / t * max(cores - 1, 1))
        big = _synthetic_jpegs(folder, 4, 3000, 2000, seed=1)
        start = time.perf_counter()
        for p in big:
            decode_image(Path(p), 256)
        out["pil_3000x2000_images_per_s_one_core"] = round(len(big) / (time.perf_counter() - start), 2)

        def decode_draft(path, size=256):
            with Image.open(path) as image:
                image.draft("RGB", (size, size))
                image = image.convert("RGB")
                w, h = image.size
                scale = size / min(w, h)
                image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
            return image

        start = time.perf_counter()
        for p in big:
            decode_draft(p)
        out["pil_draft_3000x2000_images_per_s_one_core"] = round(len(big) / (time.perf_counter() - start), 2)
        if CUDA:
            try:
                import torchvision
                from torchvision.io import decode_jpeg, read_file
                datas = [read_file(p) for p in paths]
                decode_jpeg(datas[:8], device=DEV)
                sync()
                start = time.perf_counter()
                reps = 3
                for _ in range(reps):
                    imgs = decode_jpeg(datas, device=DEV)
                    resized = [F.interpolate(i.unsqueeze(0).float(), size=(256, 256), mode="bilinear", antialias=True)
                               for i in imgs]
                sync()
                out["torchvision_decode_jpeg_cuda_images_per_s"] = round(reps * len(datas) / (time.perf_counter() - start))
                out["torchvision_version"] = torchvision.__version__
                del resized
            except Exception as error:  # noqa: BLE001
                out["torchvision_decode_jpeg_cuda"] = f"failed: {type(error).__name__}: {error}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


@section("syncbn")
def _syncbn():
    """byol's SyncBatchNorm (the default composite: one all-reduce, no mask; and "fused": torch's fused kernels,
    no mask) against torch's, in a 1-rank NCCL group, bf16 input, channels_last: host syncs and time per
    forward + backward of a BN layer."""
    if not CUDA:
        return {"skipped": "cpu"}
    import datetime

    import torch.distributed as dist

    from byol import distributed as byol_dist
    out = {}
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    dist.init_process_group("nccl", rank=0, world_size=1, timeout=datetime.timedelta(seconds=60),
                            device_id=DEV if DEV.index is not None else torch.device("cuda", 0))
    real_is_distributed = byol_dist.is_distributed
    byol_dist.is_distributed = lambda: True  # take the all-reduce path although the group has one rank
    try:
        x = torch.randn(128, 64, 16, 16, device=DEV).contiguous(memory_format=CL).requires_grad_()
        ref = F.batch_norm(x.detach(), None, None, training=True, eps=1e-5)
        from torch.nn.modules._functions import SyncBatchNorm as TorchSyncFunction
        # In a 1-rank group torch's nn.SyncBatchNorm falls back to plain batch norm ("torch": what a 1-GPU run
        # gets); "torch-sync-path" calls its synchronising function directly, mask and all, as on several GPUs.
        for name in ("byol", "fused", "torch", "torch-sync-path"):
            implementation = "torch" if name == "torch-sync-path" else name
            bn = byol_dist.convert_sync_batchnorm(torch.nn.BatchNorm2d(64), DEV, implementation=implementation).to(DEV)

            def fwd_bwd(bn=bn, name=name):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    h = x.to(torch.bfloat16)  # a convolution's output under autocast
                    if name == "torch-sync-path":
                        y = TorchSyncFunction.apply(h, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps,
                                                    bn.momentum, dist.group.WORLD, 1)
                    else:
                        y = bn(h)
                y.float().square().mean().backward()
                return y

            y = fwd_bwd()
            out[f"{name}_forward_dtype"] = str(y.dtype)
            out[f"{name}_max_abs_diff_vs_fp32_batchnorm"] = float((y.float() - ref).abs().max())
            out[f"{name}_syncs_per_forward_backward"] = count_syncs(fwd_bwd)
            out[f"{name}_ms_per_forward_backward"] = ms(median_s(fwd_bwd, reps=20))
        out["note"] = ("1-rank NCCL group; multi-GPU speed is not measured. 'torch' is nn.SyncBatchNorm, which "
                       "in one rank is plain batch norm; 'torch-sync-path' its synchronising function")
    finally:
        byol_dist.is_distributed = real_is_distributed
        dist.destroy_process_group()
    return out


say(f"all sections done; results in {args.out}")
save()
PYEOF
cat > "$WORK/summarize.py" <<'PYEOF'
#!/usr/bin/env python3
"""Short table of everything device_check.sh collected under $OUT (missing files are said, not fatal)."""
import csv
import json
import os
import statistics
import sys

out = sys.argv[1]
skipped = sys.argv[2] if len(sys.argv) > 2 else ""
steps = sys.argv[3] if len(sys.argv) > 3 else ""


def load(name):
    path = os.path.join(out, name)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def lines(name):
    path = os.path.join(out, name)
    try:
        with open(path) as f:
            return [json.loads(x) for x in f if x.strip().startswith("{")]
    except (OSError, ValueError):
        return []


def f(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


print("=" * 100)
print("byol device check: summary")
checks = load("cuda_checks.json") or {}
env = checks.get("env", {})
print(f"device {env.get('name', '?')} cc {env.get('capability', '?')} SMs {env.get('sm_count', '?')} "
      f"{env.get('memory_gib', '?')} GiB; torch {env.get('torch', '?')} cuda {env.get('cuda_runtime', '?')} "
      f"cudnn {env.get('cudnn', '?')} torchvision {env.get('torchvision', '?')}; cpus {env.get('cpu_count', '?')}")
print(f"steps run: {steps}; skipped for time or missing inputs: {skipped or 'none'}")
c = checks.get("ceilings", {})
if c and "error" not in c:
    print(f"ceilings: bf16 matmul 8192^3 {f(c.get('matmul_bf16_8192_tflops'))} TFLOP/s | device copy "
          f"{f(c.get('d2d_copy_tb_s_read_plus_write'), 2)} TB/s | byol bench's own peak: bf16 "
          f"{f(c.get('byol_bench_peak_bf16_tflops'))} ({c.get('byol_bench_peak_bf16_kind')}), fp32 "
          f"{f(c.get('byol_bench_peak_fp32_tflops'))} TFLOP/s ({c.get('byol_bench_peak_fp32_kind')})")
s = checks.get("syncs", {})
if s and "error" not in s:
    def n(key):
        v = s.get(key) or {}
        return v.get("total")
    print(f"host syncs ({s.get('config')}): step {n('training_step')} | augment {n('augment_both_views')} "
          f"| fwd+bwd {n('forward_backward')} | LARS {n('lars_step')} | EMA {n('update_target')} | probe "
          f"{n('probe_step_cpu_labels')} | fp16+GradScaler step {n('training_step_fp16_gradscaler')} | "
          f"checkpoint finite check {n('checkpoint_finite_check')} | log-step collapse {n('collapse_metrics_log_step')}")
    print(f"   where (step): {json.dumps((s.get('training_step') or {}).get('by_line', {}))}")
    print(f"   where (fp16 step): {json.dumps((s.get('training_step_fp16_gradscaler') or {}).get('by_line', {}))}")
elif s:
    print(f"syncs: {s.get('error')}")
p = checks.get("profile", {})
if p and "error" not in p:
    print(f"profile: {p.get('wall_ms_per_step_profiled')} ms/step wall, GPU busy {p.get('gpu_busy_ms_per_step')} ms "
          f"({f(100 * (p.get('gpu_busy_fraction_of_wall') or 0))}% of wall), {p.get('gpu_kernels_per_step')} kernels/step")
    print(f"   kernel time by family: {json.dumps(p.get('kernel_time_share_by_family'))}")
elif p:
    print(f"profile: {p.get('error')}")
g = checks.get("graphs", {})
if g and "error" not in g and "skipped" not in g:
    gp = g.get("profile") or {}
    print(f"cuda graphs: step {g.get('eager_whole_step_ms')} ms eager -> {g.get('graphed_whole_step_ms')} ms graphed "
          f"({g.get('speedup')}x, {f(g.get('images_per_s_graphed'), 0)} img/s); graphed GPU busy "
          f"{f(100 * (gp.get('gpu_busy_fraction_of_wall') or 0))}% of wall, {gp.get('gpu_kernels_per_step')} kernels/step")
elif g:
    print(f"graphs: {g.get('error') or g.get('skipped')}")
ph = checks.get("phases", {})
if ph and "error" not in ph:
    print(f"phases ms ({ph.get('config')}): step {ph.get('whole_step_ms')} = augment {ph.get('augment_both_views_ms')} "
          f"+ fwd/bwd {ph.get('forward_backward_ms')} + LARS {ph.get('lars_step_ms')} + EMA {ph.get('update_target_ms')} "
          f"(sum {ph.get('sum_of_parts_ms')}); probe {ph.get('probe_step_ms')}; log-step collapse metrics "
          f"{ph.get('collapse_metrics_ms_per_log_step')}; fwd only {ph.get('forward_only_no_grad_ms')}")
w = checks.get("whatif", {})
if w and "error" not in w:
    print(f"what-ifs img/s: today's defaults {f(w.get('baseline_step_images_per_s'), 0)} | with the old nonzero "
          f"masking {f(w.get('step_with_augment_nonzero_images_per_s'), 0)} | cudnn.benchmark off "
          f"{f(w.get('step_cudnn_benchmark_off_images_per_s'), 0)} | all old ways {f(w.get('step_all_old_ways_images_per_s'), 0)} "
          f"| contiguous (not channels_last) {f(w.get('step_contiguous_format_images_per_s'), 0)}")
    print(f"   augment ms default {w.get('augment_default_ms')} ({w.get('augment_default_syncs')} syncs) vs nonzero "
          f"{w.get('augment_nonzero_ms')} ({w.get('augment_nonzero_syncs')} syncs; diff "
          f"{w.get('augment_nonzero_max_abs_diff_vs_default')}); LARS ms foreach {w.get('lars_foreach_ms')} vs loop "
          f"{w.get('lars_loop_ms')} (rel diff {w.get('lars_loop_max_rel_diff_vs_foreach')}); "
          f"EMA ms {w.get('ema_mul_add_ms')} vs lerp {w.get('ema_lerp_ms')}")
pa = checks.get("parity", {})
if pa and "error" not in pa:
    print(f"parity CPU vs CUDA: augment ops max |diff| {pa.get('max_abs_diff_augment_ops')}; fp32 loss rel diff "
          f"{pa.get('loss_fp32_rel_diff')}; bf16 vs fp32 loss rel diff {pa.get('loss_bf16_vs_fp32_rel_diff')}")
d = checks.get("data", {})
if d and "error" not in d:
    print(f"data ({d.get('dataset')}): BatchStream pinned {f(d.get('stream_only_images_per_s'), 0)} img/s, + H2D copy "
          f"{f(d.get('stream_plus_copy_images_per_s'), 0)} img/s ({d.get('per_step_host_ms_at_batch')} ms/step host); "
          f"on-device indexing {f(d.get('on_device_indexing_images_per_s'), 0)} img/s")
de = checks.get("decode", {})
if de and "error" not in de:
    print(f"folder decode: PIL 500x375->256 {de.get('pil_decode_resize256_images_per_s_one_core')} img/s/core "
          f"(~{de.get('pil_estimate_all_cores_minus_one')} on all cores but one); 3000x2000: "
          f"{de.get('pil_3000x2000_images_per_s_one_core')} img/s/core, with draft() {de.get('pil_draft_3000x2000_images_per_s_one_core')}; "
          f"torchvision decode_jpeg cuda {de.get('torchvision_decode_jpeg_cuda_images_per_s', de.get('torchvision_decode_jpeg_cuda'))} img/s")
sb = checks.get("syncbn", {})
if sb and "error" not in sb and "skipped" not in sb:
    for name in ("byol", "fused", "torch", "torch-sync-path"):
        print(f"SyncBatchNorm {name} (1-rank NCCL, bf16, channels_last): {sb.get(name + '_ms_per_forward_backward')} ms, "
              f"{(sb.get(name + '_syncs_per_forward_backward') or {}).get('total')} syncs per fwd+bwd, max diff "
              f"{sb.get(name + '_max_abs_diff_vs_fp32_batchnorm')}")
elif sb:
    print(f"SyncBatchNorm: {sb.get('error') or sb.get('skipped')}")
for name in [k for k, v in checks.items() if isinstance(v, dict) and "error" in v]:
    print(f"   check section {name} FAILED: {checks[name]['error'][:300]}")

bench = lines("bench.jsonl")
if bench:
    print("-" * 100)
    print(f"{'bench':<26} {'ms/step':>8} {'img/s':>9} {'GFLOP/img':>9} {'util':>6} {'aug%':>5} {'peak MB':>8}  peers (ours/theirs)")
    for b in bench:
        if "ms_per_step" not in b:
            continue
        peers = "; ".join(f"{k} {v.get('images_per_s', 0):.0f} img/s -> {v.get('ours_over_peer', 0):.2f}x" if "skipped" not in v
                          else f"{k} skipped" for k, v in (b.get("compare") or {}).items())
        print(f"{b.get('label', '?'):<26} {b['ms_per_step']:>8.1f} {b['images_per_s']:>9.0f} "
              f"{(b.get('flops_per_image') or 0) / 1e9:>9.2f} {100 * (b.get('utilization') or 0):>5.1f}% "
              f"{100 * (b.get('augment_fraction') or 0):>4.1f}% {b.get('peak_cuda_memory_mb', 0):>8.0f}  {peers}")
    for b in bench:
        if "train_max_memory_allocated_mb" in b:
            print(f"train process: max_memory_allocated {b['train_max_memory_allocated_mb']} MB, reserved "
                  f"{b['max_memory_reserved_mb']} MB, rc {b['rc']}")

summary = load("summary.json")
metrics = lines("metrics.jsonl")
if summary or metrics:
    print("-" * 100)
    if summary:
        print(f"train (gpu preset, time-boxed): {summary.get('steps')}/{summary.get('total_steps')} steps, "
              f"{f(summary.get('epochs'), 2)} epochs, {f(summary.get('wall_s'))} s, {f(summary.get('images_per_s'), 0)} img/s "
              f"overall, final loss {f(summary.get('final_loss'), 4)}, finished {summary.get('finished')}")
    else:
        print("train: no summary.json (the run did not finish its epochs: see the log)")
    rates = [m["images_per_s"] for m in metrics if "images_per_s" in m]
    if rates:
        print(f"   metrics.jsonl images_per_s: median {statistics.median(rates):,.0f}, min {min(rates):,.0f}, "
              f"max {max(rates):,.0f} over {len(rates)} log lines (windows exclude the kNN monitor)")
    knn = [(m.get("epoch"), m["knn_top1"]) for m in metrics if "knn_top1" in m]
    if knn:
        shown = knn if len(knn) <= 6 else knn[:3] + knn[-3:]
        print("   kNN monitor (epoch:top-1): " + ", ".join(f"{e:g}:{v:.1f}" for e, v in shown)
              + (f"  ({len(knn)} points)" if len(knn) > 6 else ""))
    losses = [m["loss"] for m in metrics if "loss" in m]
    if losses:
        print(f"   loss first {losses[0]:.4f} last {losses[-1]:.4f}; probe_top1 last "
              f"{next((m['probe_top1'] for m in reversed(metrics) if 'probe_top1' in m), None)}; effective_rank last "
              f"{next((round(m['effective_rank'], 1) for m in reversed(metrics) if 'effective_rank' in m), None)}")
ev = load("eval.json")
if ev:
    def e(k):
        return f(ev.get(k), 2)
    print(f"eval: kNN {e('knn_top1')} (random init {e('random_init_knn_top1')}, raw pixels {e('raw_pixel_knn_top1')}); "
          f"linear {e('linear_top1')} ({e('random_init_linear_top1')}, {e('raw_pixel_linear_top1')}); "
          f"eval wall {f(ev.get('eval_wall_s'))} s")
try:
    with open(os.path.join(out, "smi.csv")) as fh:
        rows = [r for r in csv.reader(fh) if r and not r[0].startswith("timestamp")]
    util = [float(r[1].strip().split()[0]) for r in rows if len(r) > 4 and r[1].strip().split()[0].replace(".", "").isdigit()]
    mem = [float(r[3].strip().split()[0]) for r in rows if len(r) > 4 and r[3].strip().split()[0].replace(".", "").isdigit()]
    power = [float(r[4].strip().split()[0]) for r in rows if len(r) > 4 and r[4].strip().split()[0].replace(".", "").isdigit()]
    if util:
        busy = [u for u in util if u > 0]
        print(f"nvidia-smi samples: {len(util)}; GPU util mean {statistics.mean(util):.0f}% (mean of non-idle samples "
              f"{statistics.mean(busy) if busy else 0:.0f}%); memory used max {max(mem) if mem else 0:.0f} MiB; "
              f"power max {max(power) if power else 0:.0f} W")
except OSError:
    pass
print("=" * 100)
PYEOF
cat > "$WORK/train_mem.py" <<'PYEOF'
"""`byol train` in this process, then the peak CUDA memory it took (torch.cuda.max_memory_allocated)."""
import json
import sys
import time

import torch

from byol.cli import main

start = time.perf_counter()
rc = main(sys.argv[1:])
record = {"label": "train-gpu-preset-memory", "rc": rc, "wall_s": round(time.perf_counter() - start, 1)}
if torch.cuda.is_available():
    record.update(train_max_memory_allocated_mb=round(torch.cuda.max_memory_allocated() / 2**20),
                  max_memory_reserved_mb=round(torch.cuda.max_memory_reserved() / 2**20))
print(json.dumps(record), flush=True)
with open(sys.argv[0].replace("train_mem.py", "train_mem.json"), "w") as f:
    f.write(json.dumps(record) + "\n")
sys.exit(rc)
PYEOF

# bench LABEL args... : byol bench --json, its JSON line labelled and appended to $OUT/bench.jsonl
bench() {
    local label=$1; shift
    timeout -k 20 "${STEP_LIMIT:-300}" "${BYOL[@]}" bench --device "$DEVICE" --json "$@" \
        > "$WORK/bench-$label.out" 2> "$WORK/bench-$label.err"
    local rc=$?
    tail -5 "$WORK/bench-$label.err"
    "$PY" - "$WORK/bench-$label.out" "$label" "$OUT/bench.jsonl" <<'PYEOF'
import json, sys
text = open(sys.argv[1]).read().splitlines()
rows = [line for line in text if line.startswith("{")]
if not rows:
    print(f"  {sys.argv[2]}: no JSON result; stdout was: {' | '.join(text[-5:])}")
    sys.exit(0)
result = json.loads(rows[-1])
result["label"] = sys.argv[2]
with open(sys.argv[3], "a") as f:
    f.write(json.dumps(result) + "\n")
peers = {k: (v.get("skipped") or f"{v['images_per_s']:.0f} img/s, ours {v['ours_over_peer']:.2f}x") for k, v in result.get("compare", {}).items()}
print(f"  {sys.argv[2]}: {result['ms_per_step']:.1f} ms/step, {result['images_per_s']:.0f} img/s, "
      f"{(result.get('flops_per_image') or 0) / 1e9:.2f} GFLOP/img, util {100 * (result.get('utilization') or 0):.1f}%, "
      f"augment {100 * result['augment_fraction']:.1f}%, peak {result.get('peak_cuda_memory_mb', result.get('peak_rss_mb', 0)):.0f} MB, {peers}")
PYEOF
    return $rc
}

if [ "$DRY" = 1 ]; then
    M=(--backbone resnet18 --width 0.125 --channels 1 --image-size 28 --batch-size 32 --steps 2 --warmup 1)
    R18=(--backbone resnet18 --width 0.125 --image-size 16 --batch-size 16 --steps 2 --warmup 1)
    R50=(--backbone resnet50 --width 0.125 --image-size 32 --batch-size 8 --steps 2 --warmup 1)
    CHECK_ARGS=(--small --only env,syncs,phases,whatif,data); PREC=fp32
else
    M=(--backbone resnet18 --channels 1 --image-size 28 --batch-size 512 --steps 20 --warmup 5)
    R18=(--backbone resnet18 --image-size 32 --batch-size 512 --steps 20 --warmup 5)
    R50=(--backbone resnet50 --image-size 224 --batch-size 128 --steps 8 --warmup 3)
    CHECK_ARGS=(); PREC=bf16
fi
COMPARE=(--compare byol-pytorch,lightly)

# ---------------------------------------------------------------- checks
if want checks; then
    step checks 45 120 "$PY" "$WORK/cuda_checks.py" --device "$DEVICE" --out "$OUT/cuda_checks.json" \
        --trace "$OUT/trace.json.gz" ${FM:+--fmnist "$FM"} "${CHECK_ARGS[@]}"
fi
# ---------------------------------------------------------------- bench
if want bench; then
    step bench-gpu-preset-model 30 75 bench r18-1ch-28px-b512 --precision "$PREC" "${M[@]}"
    step bench-r18-32px-b512 40 100 bench r18-32px-b512 --precision "$PREC" "${R18[@]}" "${COMPARE[@]}"
    step bench-r50-224px-b128 45 120 bench r50-224px-b128 --precision "$PREC" "${R50[@]}" "${COMPARE[@]}"
fi
# ---------------------------------------------------------------- CUDA graphs (byol train --cuda-graphs)
if want graphs && [ "$DRY" != 1 ]; then   # the eager baseline is in the profile section (same process, back to back)
    step graphs-r18-32px-b512 40 100 bench r18-32px-b512-graphs --precision "$PREC" "${R18[@]}" --cuda-graphs --compare byol-pytorch
    step graphs-profile 40 120 "$PY" "$WORK/cuda_checks.py" --device "$DEVICE" --out "$OUT/cuda_checks.json" \
        --only env,graphs,syncbn ${FM:+--fmnist "$FM"} "${CHECK_ARGS[@]}"
    step graphs-r50-224px-b128 45 120 bench r50-224px-b128-graphs --precision "$PREC" "${R50[@]}" --cuda-graphs
    if want train; then   # sizes a --cuda-graphs training run (TRAIN_GRAPHS=1)
        step graphs-gpu-preset-model 30 75 bench r18-1ch-28px-b512-graphs --precision "$PREC" "${M[@]}" --cuda-graphs
    fi
fi
# ---------------------------------------------------------------- train (time-boxed) and eval
RUN="$WORK/run-gpu-preset"
if want train && [ -n "$FM" ]; then
    MODEL_LABEL=r18-1ch-28px-b512; [ "${TRAIN_GRAPHS:-0}" = 1 ] && MODEL_LABEL=r18-1ch-28px-b512-graphs
    read -r EPOCHS WARM < <("$PY" - "$OUT/bench.jsonl" "$TRAIN_S" "$DRY" "$MODEL_LABEL" <<'PYEOF'
import json, sys
ips = None
try:
    for line in open(sys.argv[1]):
        row = json.loads(line)
        if row.get("label") == sys.argv[4]:
            ips = row["images_per_s"]
except OSError:
    pass
train_s, dry = float(sys.argv[2]), sys.argv[3] == "1"
if dry:
    print(1, 0.5)
    sys.exit()
ips = ips or 6000.0
epoch_s = 117 * 512 / ips * 1.05 + 0.2   # + the kNN monitor every 10 epochs, a checkpoint every 2000 steps (estimates)
epochs = max(1, min(300, int((train_s - 25) / epoch_s)))
print(epochs, max(0.5, round(epochs / 10, 1)))
PYEOF
)
    echo "training: $EPOCHS epochs (warm-up $WARM) sized to ~${TRAIN_S}s from the bench above"
    if [ "$DRY" = 1 ]; then
        TRAIN_ARGS=(train --preset smoke --epochs 1 --device cpu --precision fp32 --data "$FM" --out "$RUN")
    else
        TRAIN_ARGS=(train --preset gpu --device cuda --epochs "$EPOCHS" --warmup-epochs "$WARM" --data "$FM" --out "$RUN")
        if [ "${TRAIN_GRAPHS:-0}" = 1 ]; then TRAIN_ARGS+=(--cuda-graphs); fi
    fi
    step train 60 $(( TRAIN_S + 60 )) "$PY" "$WORK/train_mem.py" "${TRAIN_ARGS[@]}"
    [ -f "$WORK/train_mem.json" ] && cat "$WORK/train_mem.json" >> "$OUT/bench.jsonl"
    for f in metrics.jsonl summary.json; do [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"; done
    [ -f "$RUN/config.yaml" ] && { echo "--- $RUN/config.yaml"; cat "$RUN/config.yaml"; }
elif want train; then
    SKIPPED="$SKIPPED train(no-data)"
fi
if want eval && [ -f "$RUN/checkpoint.pt" ]; then
    EVAL_ARGS=()
    if (( $(remaining) < 100 )); then EVAL_ARGS+=(--no-baselines); echo "eval without baselines (time)"; fi
    if [ "$DRY" = 1 ]; then EVAL_ARGS+=(--no-baselines --linear-epochs 1); fi
    step eval 40 150 "${BYOL[@]}" eval --checkpoint "$RUN/checkpoint.pt" --device "$DEVICE" --data "$FM" --json "${EVAL_ARGS[@]}"
    [ -f "$RUN/eval.json" ] && cp "$RUN/eval.json" "$OUT/"
elif want eval; then
    SKIPPED="$SKIPPED eval(no-checkpoint)"
fi
# ---------------------------------------------------------------- compile, tests
# Compilation alone took over 99 s for ResNet-18 on the H100 (2026-11-26). The ResNet-18 compile bench goes
# first, capped so that the cuda-marked tests keep 110 s after it; the rest fills what is left.
TESTS_CUDA=(bash -c 'cd "$1" && shift && "$@"' _ "$PROJECT" "$PY" -m pytest -q -rfEs -p no:cacheprovider -m cuda)
# the tests that reach CUDA through --device auto (the rest pin --device cpu)
TESTS_AUTO=(bash -c 'cd "$1" && shift && "$@"' _ "$PROJECT" "$PY" -m pytest -q -rfEs -p no:cacheprovider
            tests/test_train.py::test_smoke_preset_end_to_end tests/test_report.py::test_eval_json_has_every_field_and_beats_chance
            tests/test_report.py::test_semi_protocol_saves_its_subsets)
if want compile && [ "$DRY" != 1 ]; then
    CAP=$(remaining)
    if want tests; then CAP=$(( CAP - 110 )); fi
    (( CAP > 300 )) && CAP=300
    step bench-r18-32px-b512-compile 120 "$CAP" bench r18-32px-b512-compile --precision "$PREC" "${R18[@]}" --compile
fi
if want tests; then
    step tests-cuda 40 120 "${TESTS_CUDA[@]}"
fi
if want compile && [ "$DRY" != 1 ]; then
    # inductor's on-disk cache makes the second compilation of the same graphs quicker
    step bench-r18-32px-b512-compile-graphs 60 200 bench r18-32px-b512-compile-graphs --precision "$PREC" "${R18[@]}" --compile --cuda-graphs
    step bench-r50-224px-b128-compile 120 300 bench r50-224px-b128-compile --precision "$PREC" "${R50[@]}" --compile
fi
if want tests; then
    step tests-auto 50 100 "${TESTS_AUTO[@]}"
fi
# ---------------------------------------------------------------- summary
[ -n "${SMI_PID:-}" ] && kill "$SMI_PID" 2>/dev/null
echo; echo "=== results:$RESULTS"
"$PY" "$WORK/summarize.py" "$OUT" "${SKIPPED# }" "$STEPS"
echo "files in \$OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
echo "total $(( SECONDS - START ))s"
}

main "$@" 2>&1 | tee "$OUT/log.txt"
