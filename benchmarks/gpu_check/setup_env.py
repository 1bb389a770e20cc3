"""The `setup` step: the python with torch (the image's own: torch is never installed, never upgraded),
byol installed from the checkout (`pip install -e . --no-deps --no-build-isolation --no-index`: offline, and
only when STEPS names setup and it is not a dry run), the peers' wheels from .whl/ into a --target folder put
on PYTHONPATH, then one probe (torch, CUDA, and the modules the steps import), the machine, nvidia-smi's
read-only queries and its 2 Hz sampler. No torch or no CUDA (on a GPU run) stops the check: every other step
is skipped, the summary says why."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path

from .context import Context

HAS_TORCH = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('torch') and u.find_spec('torchvision') else 1)"
PROBE = """
import importlib, json, sys
import torch, torchvision
found = {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
         "cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count(), "imports": {}}
for name in ("byol", "byol_pytorch", "lightly", "beartype", "numpy", "PIL", "yaml", "safetensors", "tqdm",
             "tensorboard", "matplotlib", "pytest", "hypothesis"):
    try:
        module = importlib.import_module(name)
        version, file = str(getattr(module, "__version__", "")), getattr(module, "__file__", "")
        found["imports"][name] = {"version": version, "file": file}
    except Exception as error:
        found["imports"][name] = {"error": f"{type(error).__name__}: {error}"}
print(json.dumps(found))
"""
FALLBACK_PY = "/opt/torch/.venv/bin/python3"
SMI_QUERY = (
    "name,driver_version,memory.total,power.limit,clocks.max.sm,clocks.sm,pstate,persistence_mode,compute_mode,"
    "mig.mode.current"
)
SMI_SAMPLES = "timestamp,utilization.gpu,utilization.memory,memory.used,power.draw,clocks.sm,temperature.gpu"


def last_json(lines: list[str]) -> dict | None:
    for line in reversed(lines or []):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _choose_python(ctx: Context) -> None:
    """PY, or the image's other python when python3 has no torch (a look-up, without importing torch)."""
    done = subprocess.run([ctx.py, "-c", HAS_TORCH], capture_output=True, timeout=60)
    if done.returncode and ctx.py == "python3" and os.access(FALLBACK_PY, os.X_OK):
        ctx.log(f"python3 has no torch: using {FALLBACK_PY}")
        ctx.py = FALLBACK_PY


def _probe(ctx: Context, runs: dict) -> dict | None:
    """torch, CUDA and the modules the steps import, after the installs, in one child."""
    entry, done = ctx.python("probe", ["-c", PROBE], 0, 90, select=False)
    found = last_json(done.stdout) if done else None
    runs["probe"] = {**entry, "python": shutil.which(ctx.py) or ctx.py}
    return found


def _fatal(ctx: Context, found: dict | None) -> str | None:
    if found is None:
        return f"no torch/torchvision in {ctx.py}: this check needs the GPU machine's preinstalled torch"
    if ctx.device.startswith("cuda") and not found.get("cuda_available"):
        return "torch sees no CUDA device"
    return None


def _install(ctx: Context, runs: dict) -> None:
    if not ctx.wants("setup") or ctx.dry:
        runs["pip-install-e"] = {"status": "deselected", "reason": "dry run" if ctx.dry else "not in STEPS"}
        return
    args = ["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(ctx.project)]
    runs["pip-install-e"], _ = ctx.python("pip-install-e", args, 0, 120, cwd=ctx.project, select=False)


def _peers(ctx: Context, runs: dict) -> None:
    if ctx.whl is None:
        runs["peers"] = {"status": "deselected", "reason": "no .whl folder: --compare peers are reported as skipped"}
        return
    wheels = sorted(str(p) for p in ctx.whl.glob("*.whl"))
    site = ctx.work / "site"
    args = ["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade"]
    runs["peers"], _ = ctx.python("peers", [*args, "--target", str(site), *wheels], 0, 120, select=False)
    runs["peers"]["wheels"] = [Path(w).name for w in wheels]
    ctx.prepend_pythonpath(site)


def _link_fmnist(ctx: Context) -> str:
    """The smoke test looks for Fashion-MNIST only at the Debian path."""
    debian = Path("/usr/share/datasets/fashion-mnist")
    if ctx.fmnist is None or debian.exists():
        return "not needed" if ctx.fmnist else "no Fashion-MNIST found"
    try:
        debian.parent.mkdir(parents=True, exist_ok=True)
        debian.symlink_to(ctx.fmnist)
        return f"linked {ctx.fmnist} to {debian}"
    except OSError as error:
        return f"could not link {debian}: {error}"


DRY_SPLITS = {"train": 2048, "t10k": 512}  # images per split of a dry run's Fashion-MNIST


def copy_idx(source: Path, target: Path, count: int) -> None:
    """The first `count` items of an IDX file (gzipped or not), gzipped."""
    with (gzip.open if source.suffix == ".gz" else open)(source, "rb") as f:
        magic = f.read(4)
        dims = struct.unpack(f">{magic[3]}I", f.read(4 * magic[3]))
        count = min(count, dims[0])
        data = f.read(count * math.prod(dims[1:]))
    with gzip.open(target, "wb") as g:
        g.write(magic + struct.pack(f">{len(dims)}I", count, *dims[1:]) + data)


def dry_fmnist(ctx: Context) -> Path:
    """A dry run trains and evaluates on a small copy of Fashion-MNIST (its first images, in WORK)."""
    target = ctx.work / "fashion-mnist-dry"
    target.mkdir(exist_ok=True)
    for split, count in DRY_SPLITS.items():
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            source = next(p for p in (ctx.fmnist / f"{split}-{kind}.gz", ctx.fmnist / f"{split}-{kind}") if p.exists())
            copy_idx(source, target / f"{split}-{kind}.gz", count)
    return target


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "disk_tmp_free_gib": round(shutil.disk_usage("/tmp").free / 2**30, 1)}
    try:
        with open("/proc/meminfo") as meminfo:
            info["memory_gib"] = round(int(meminfo.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def _nvidia_smi(ctx: Context, runs: dict) -> None:
    if shutil.which("nvidia-smi") is None:
        runs["nvidia-smi"] = {"status": "deselected", "reason": "no nvidia-smi"}
        return
    ctx.command("nvidia-smi", ["nvidia-smi"], 0, 30, select=False)
    query = ["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv"]
    runs["nvidia-smi"], done = ctx.command("nvidia-smi-query", query, 0, 30, select=False)
    runs["nvidia-smi"]["csv"] = done.stdout if done else []
    sampler = ["nvidia-smi", f"--query-gpu={SMI_SAMPLES}", "--format=csv", "-lms", "500"]
    with open(ctx.out / "smi.csv", "w") as csv:
        ctx.state["smi"] = subprocess.Popen(sampler, stdout=csv, stderr=subprocess.DEVNULL, start_new_session=True)


def run(ctx: Context) -> dict:
    runs: dict = {}
    try:
        _choose_python(ctx)
    except (OSError, subprocess.SubprocessError) as error:
        ctx.log(f"{ctx.py}: {error}")
    _install(ctx, runs)
    _peers(ctx, runs)
    found = _probe(ctx, runs)
    ctx.fatal = _fatal(ctx, found)
    if ctx.fatal:
        return {"status": "failed", "error": ctx.fatal, "runs": runs}
    imports = found.pop("imports", {})
    _nvidia_smi(ctx, runs)
    byol_file = imports.get("byol", {}).get("file", "")
    link = _link_fmnist(ctx)
    if ctx.dry and ctx.fmnist:
        ctx.fmnist = dry_fmnist(ctx)
    return {
        "runs": runs,
        "torch": found,
        "imports": imports,
        "byol_from_project": bool(ctx.project and byol_file.startswith(str(ctx.project))),
        "fashion_mnist": str(ctx.fmnist),
        "fashion_mnist_link": link,
        "machine": machine(),
        "pythonpath": ctx.env.get("PYTHONPATH", ""),
    }
