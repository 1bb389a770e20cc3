"""The `bench` step: `byol bench --json` in a child of its own per configuration (measure/bench_cli.py):

  r18-1ch-28px-b512   the gpu preset's model: ResNet-18, 1 channel, 28 px, batch 512 (it sizes the train step)
  r18-32px-b512       ResNet-18 CIFAR stem, 32 px, batch 512, --compare byol-pytorch,lightly
  r50-224px-b128      ResNet-50, 224 px, batch 128, --compare byol-pytorch,lightly

bf16 on a GPU; a dry run benches toys in fp32. The graphs and compile steps bench through `bench_runs` too.
"""

from __future__ import annotations

from dataclasses import dataclass

from .context import Context, aggregate
from .setup_env import last_json

COMPARE = ("--compare", "byol-pytorch,lightly")
SIZES = {  # name: (GPU arguments, dry-run arguments)
    "model": (
        "--backbone resnet18 --channels 1 --image-size 28 --batch-size 512 --steps 20 --warmup 5",
        "--backbone resnet18 --width 0.125 --channels 1 --image-size 28 --batch-size 32 --steps 2 --warmup 1",
    ),
    "r18": (
        "--backbone resnet18 --image-size 32 --batch-size 512 --steps 20 --warmup 5",
        "--backbone resnet18 --width 0.125 --image-size 16 --batch-size 16 --steps 2 --warmup 1",
    ),
    "r50": (
        "--backbone resnet50 --image-size 224 --batch-size 128 --steps 8 --warmup 3",
        "--backbone resnet50 --width 0.125 --image-size 32 --batch-size 8 --steps 2 --warmup 1",
    ),
}


@dataclass(frozen=True)
class Spec:
    label: str
    size: str  # a key of SIZES
    extra: tuple[str, ...] = ()
    need: float = 30
    cap: float = 100


SPECS = (
    Spec("r18-1ch-28px-b512", "model", (), 30, 75),
    Spec("r18-32px-b512", "r18", COMPARE, 40, 100),
    Spec("r50-224px-b128", "r50", COMPARE, 45, 120),
)


def arguments(ctx: Context, spec: Spec) -> list[str]:
    size = SIZES[spec.size][1 if ctx.dry else 0].split()
    precision = ["--precision", "fp32" if ctx.stand_in else "bf16"]
    stand_in = ["--stand-in"] if ctx.stand_in else []
    return [
        "-m",
        "benchmarks.gpu_check.measure.bench_cli",
        "--device",
        ctx.device,
        *precision,
        *size,
        *spec.extra,
        *stand_in,
    ]


def one_line(label: str, result: dict) -> str:
    peers = {
        name: peer.get("skipped") or f"{peer['images_per_s']:.0f} img/s, ours {peer['ours_over_peer']:.2f}x"
        for name, peer in (result.get("compare") or {}).items()
    }
    fraction = result.get("augment_fraction")
    augment = (
        f"{100 * fraction:.1f}%" if fraction is not None else f"{result.get('augment_ms_per_step', 0):.1f} ms eager"
    )
    memory = result.get("peak_cuda_memory_mb", result.get("peak_rss_mb", 0))
    gflops, utilization = (result.get("flops_per_image") or 0) / 1e9, 100 * (result.get("utilization") or 0)
    return (
        f"  {label}: {result['ms_per_step']:.1f} ms/step, {result['images_per_s']:.0f} img/s, {gflops:.2f} GFLOP/img, "
        f"util {utilization:.1f}%, augment {augment}, peak {memory:.0f} MB, {peers}"
    )


def bench_one(ctx: Context, spec: Spec) -> dict:
    entry, done = ctx.python(spec.label, arguments(ctx, spec), spec.need, spec.cap)
    if done is None:
        return entry
    result = last_json(done.stdout)
    if result is None:
        if entry["status"] == "ok":
            entry["status"] = "failed"
            ctx.failure(spec.label, f"==== {spec.label}: no JSON result; stdout ended: {done.stdout[-5:]}\n")
        return entry
    entry["result"] = result
    ctx.log(one_line(spec.label, result))
    return entry


def bench_runs(ctx: Context, specs) -> dict:
    runs = {spec.label: bench_one(ctx, spec) for spec in specs}
    return {"status": aggregate(runs), "runs": runs}


def rate(ctx: Context, label: str) -> float | None:
    """images/s a bench run of any step measured, or None."""
    for step in ("bench", "graphs", "compile"):
        result = ctx.results.step(step).get("runs", {}).get(label, {}).get("result")
        if result:
            return result.get("images_per_s")
    return None


def run(ctx: Context) -> dict:
    return bench_runs(ctx, SPECS)
