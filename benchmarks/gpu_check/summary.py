"""The `summary` step: summary.md, a short markdown digest of results.json (and of smi.csv). A part that cannot
be rendered says so in one line; the others still are."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

BENCH_STEPS = ("bench", "graphs", "compile")


def f(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,.{digits}f}"
    return str(value)


def _sections(results: dict) -> dict:
    steps = results.get("steps", {})
    return {**steps.get("checks", {}).get("sections", {}), **steps.get("graphs", {}).get("sections", {})}


def steps_table(results: dict) -> list[str]:
    lines = ["| step | status | seconds | runs |", "|---|---|---|---|"]
    for name, step in results.get("steps", {}).items():
        runs = ", ".join(f"{label} {run.get('status')}" for label, run in (step.get("runs") or {}).items())
        note = step.get("reason") or step.get("error") or ""
        lines.append(f"| {name} | {step.get('status')} | {f(step.get('seconds'))} | {runs or note} |")
    return lines


def device_line(results: dict) -> list[str]:
    env, meta = _sections(results).get("env", {}), results.get("meta", {})
    return [
        f"device {env.get('name', meta.get('device'))} cc {env.get('capability', '-')} SMs {env.get('sm_count', '-')} "
        f"{env.get('memory_gib', '-')} GiB; torch {env.get('torch', '?')} cuda {env.get('cuda_runtime', '-')} cudnn "
        f"{env.get('cudnn', '-')} torchvision {env.get('torchvision', '?')}; cpus {env.get('cpu_count', '?')}; "
        f"dry run: {meta.get('dry')}; budget {meta.get('budget_s')} s, used {f(meta.get('total_s'))} s",
    ]


def ceilings(c: dict) -> list[str]:
    matmul = next((v for k, v in c.items() if k.startswith("matmul_bf16_")), None)
    return [
        f"ceilings: bf16 matmul {f(matmul)} TFLOP/s | device copy {f(c.get('d2d_copy_tb_s_read_plus_write'), 2)} TB/s "
        f"| byol bench's peak: bf16 {f(c.get('byol_bench_peak_bf16_tflops'))} ({c.get('byol_bench_peak_bf16_kind')}), "
        f"fp32 {f(c.get('byol_bench_peak_fp32_tflops'))} TFLOP/s ({c.get('byol_bench_peak_fp32_kind')})"
    ]


def syncs(s: dict) -> list[str]:
    def n(key):
        return (s.get(key) or {}).get("total")

    return [
        f"host syncs ({s.get('config')}): step {n('training_step')} | augment {n('augment_both_views')} | fwd+bwd "
        f"{n('forward_backward')} | LARS {n('lars_step')} | EMA {n('update_target')} | probe "
        f"{n('probe_step_cpu_labels')} | fp16+GradScaler step {n('training_step_fp16_gradscaler')} | checkpoint "
        f"finite check {n('checkpoint_finite_check')} | log-step collapse {n('collapse_metrics_log_step')}",
        f"  where (step): {json.dumps((s.get('training_step') or {}).get('by_line', {}))}",
        f"  where (fp16 step): {json.dumps((s.get('training_step_fp16_gradscaler') or {}).get('by_line', {}))}",
    ]


def profile(p: dict, label: str = "profile") -> list[str]:
    return [
        f"{label}: {p.get('wall_ms_per_step_profiled')} ms/step wall, GPU busy {p.get('gpu_busy_ms_per_step')} ms "
        f"({f(100 * (p.get('gpu_busy_fraction_of_wall') or 0))}% of wall), {p.get('gpu_kernels_per_step')} kernels/step"
        + (f" ({p['warning']})" if p.get("warning") else ""),
        f"  kernel time by family: {json.dumps(p.get('kernel_time_share_by_family'))}",
    ]


def graphs(g: dict) -> list[str]:
    return [
        f"cuda graphs: step {g.get('eager_whole_step_ms')} ms eager -> {g.get('graphed_whole_step_ms')} ms graphed "
        f"({g.get('speedup')}x, {f(g.get('images_per_s_graphed'), 0)} img/s), {g.get('captures')} capture(s)"
        + (f"; {g['stand_in']}" if g.get("stand_in") else ""),
        *profile(g.get("profile") or {}, "  graphed profile"),
    ]


def phases(ph: dict) -> list[str]:
    return [
        f"phases ms ({ph.get('config')}): step {ph.get('whole_step_ms')} = augment {ph.get('augment_both_views_ms')} "
        f"+ fwd/bwd {ph.get('forward_backward_ms')} + LARS {ph.get('lars_step_ms')} + EMA {ph.get('update_target_ms')} "
        f"(sum {ph.get('sum_of_parts_ms')}); probe {ph.get('probe_step_ms')}; log-step collapse metrics "
        f"{ph.get('collapse_metrics_ms_per_log_step')}; fwd only {ph.get('forward_only_no_grad_ms')}"
    ]


def whatif(w: dict) -> list[str]:
    return [
        f"what-ifs img/s: today's defaults {f(w.get('baseline_step_images_per_s'), 0)} | per-op augmentation "
        f"{f(w.get('step_with_augment_per_op_images_per_s'), 0)} | its old nonzero masking "
        f"{f(w.get('step_with_augment_nonzero_images_per_s'), 0)} | cudnn.benchmark off "
        f"{f(w.get('step_cudnn_benchmark_off_images_per_s'), 0)} | all old ways "
        f"{f(w.get('step_all_old_ways_images_per_s'), 0)} | contiguous (not channels_last) "
        f"{f(w.get('step_contiguous_format_images_per_s'), 0)}",
        f"  augment ms default {w.get('augment_default_ms')} ({w.get('augment_default_syncs')} syncs) vs per-op "
        f"{w.get('augment_per_op_ms')} vs nonzero {w.get('augment_nonzero_ms')} ({w.get('augment_nonzero_syncs')} "
        f"syncs); LARS ms foreach {w.get('lars_foreach_ms')} vs loop "
        f"{w.get('lars_loop_ms')} (rel diff {w.get('lars_loop_max_rel_diff_vs_foreach')}); EMA ms "
        f"{w.get('ema_mul_add_ms')} vs lerp {w.get('ema_lerp_ms')}",
    ]


def parity(pa: dict) -> list[str]:
    return [
        f"parity CPU vs CUDA: augment ops max |diff| {pa.get('max_abs_diff_augment_ops')}; fp32 loss rel diff "
        f"{pa.get('loss_fp32_rel_diff')}; bf16 vs fp32 loss rel diff {pa.get('loss_bf16_vs_fp32_rel_diff')}"
    ]


def data(d: dict) -> list[str]:
    return [
        f"data ({d.get('dataset')}): BatchStream {f(d.get('stream_only_images_per_s'), 0)} img/s, + H2D copy "
        f"{f(d.get('stream_plus_copy_images_per_s'), 0)} img/s ({d.get('per_step_host_ms_at_batch')} ms/step host); "
        f"on-device indexing {f(d.get('on_device_indexing_images_per_s'), 0)} img/s"
    ]


def decode(de: dict) -> list[str]:
    gpu = de.get("torchvision_decode_jpeg_cuda_images_per_s", de.get("torchvision_decode_jpeg_cuda"))
    return [
        f"folder decode: PIL 500x375->256 {de.get('pil_decode_resize256_images_per_s_one_core')} img/s/core "
        f"(~{de.get('pil_estimate_all_cores_minus_one')} on all cores but one); {de.get('big_jpeg', '3000x2000')}: "
        f"{de.get('pil_3000x2000_images_per_s_one_core')} img/s/core, with draft() "
        f"{de.get('pil_draft_3000x2000_images_per_s_one_core')}; torchvision decode_jpeg cuda {f(gpu, 0)} img/s",
        f"  training stream at 256 px: PIL workers {f(de.get('stream_pil_workers_images_per_s'), 0)} img/s, "
        f"--decode gpu {f(de.get('stream_decode_gpu_images_per_s', de.get('stream_decode_gpu')), 0)} img/s",
    ]


def syncbn(sb: dict) -> list[str]:
    names = [k[: -len("_ms_per_forward_backward")] for k in sb if k.endswith("_ms_per_forward_backward")]
    return [
        f"SyncBatchNorm {name} (1 rank, bf16, channels_last): {sb.get(name + '_ms_per_forward_backward')} ms, "
        f"{(sb.get(name + '_syncs_per_forward_backward') or {}).get('total')} syncs per fwd+bwd, max diff "
        f"{sb.get(name + '_max_abs_diff_vs_fp32_batchnorm')}"
        for name in names
    ]


SECTION_LINES = {
    "ceilings": ceilings,
    "syncs": syncs,
    "profile": profile,
    "graphs": graphs,
    "phases": phases,
    "whatif": whatif,
    "parity": parity,
    "data": data,
    "decode": decode,
    "syncbn": syncbn,
}


def checks(results: dict) -> list[str]:
    lines = []
    for name, value in _sections(results).items():
        if name not in SECTION_LINES or not isinstance(value, dict):
            continue
        if "error" in value or "skipped" in value:
            lines.append(f"{name}: {value.get('error') or value.get('skipped')}")
        else:
            lines += SECTION_LINES[name](value)
    return lines


def bench_row(label: str, b: dict) -> str:
    peers = "; ".join(
        f"{k} skipped"
        if "skipped" in v
        else f"{k} {v.get('images_per_s', 0):.0f} img/s -> {v.get('ours_over_peer', 0):.2f}x"
        for k, v in (b.get("compare") or {}).items()
    )
    fraction = b.get("augment_fraction")
    augment = f"{100 * fraction:.1f}%" if fraction is not None else f"{f(b.get('augment_ms_per_step'))} ms eager"
    memory = b.get("peak_cuda_memory_mb", b.get("peak_rss_mb"))
    gflops, utilization = f((b.get("flops_per_image") or 0) / 1e9, 2), f(100 * (b.get("utilization") or 0))
    return (
        f"| {label} | {f(b.get('ms_per_step'))} | {f(b.get('images_per_s'), 0)} | {gflops} | {utilization}% "
        f"| {augment} | {f(memory, 0)} | {f(b.get('first_step_s'))} | {peers} |"
    )


def benches(results: dict) -> list[str]:
    lines = [
        "| bench | ms/step | img/s | GFLOP/img | util | augment | peak MB | first step s | peers (ours/theirs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for step in BENCH_STEPS:
        for label, run in (results.get("steps", {}).get(step, {}).get("runs") or {}).items():
            if run.get("result"):
                lines.append(bench_row(label, run["result"]))
            elif label != "graphs-profile" and run.get("status") != "deselected":
                lines.append(f"| {label} | {run.get('status')} {run.get('reason', '')} | | | | | | |")
    return lines if len(lines) > 2 else []


def train(results: dict) -> list[str]:
    t = results.get("steps", {}).get("train", {})
    summary, metrics, memory = t.get("summary") or {}, t.get("metrics") or [], t.get("memory") or {}
    if t.get("status") in (None, "skipped", "deselected"):
        return []
    lines = [
        f"train (time-boxed, {t.get('epochs')} epochs sized from {t.get('sized_from')}): {summary.get('steps')}/"
        f"{summary.get('total_steps')} steps, {f(summary.get('epochs'), 2)} epochs, {f(summary.get('wall_s'))} s, "
        f"{f(summary.get('images_per_s'), 0)} img/s, final loss {f(summary.get('final_loss'), 4)}, finished "
        f"{summary.get('finished')}; max_memory_allocated {memory.get('train_max_memory_allocated_mb')} MB"
    ]
    rates = [m["images_per_s"] for m in metrics if "images_per_s" in m]
    if rates:
        lines.append(
            f"  images_per_s median {statistics.median(rates):,.0f}, min {min(rates):,.0f}, max {max(rates):,.0f}"
        )
    knn = [(m.get("epoch"), m["knn_top1"]) for m in metrics if "knn_top1" in m]
    if knn:
        shown = knn if len(knn) <= 6 else knn[:3] + knn[-3:]
        lines.append(f"  kNN monitor (epoch:top-1, {len(knn)} points): " + ", ".join(f"{e}:{v:.1f}" for e, v in shown))
    return lines


def evaluation(results: dict) -> list[str]:
    ev = results.get("steps", {}).get("eval", {}).get("result") or {}
    if not ev:
        return []

    def e(k):
        return f(ev.get(k), 2)

    return [
        f"eval: kNN {e('knn_top1')} (random init {e('random_init_knn_top1')}, raw pixels {e('raw_pixel_knn_top1')}); "
        f"linear {e('linear_top1')} ({e('random_init_linear_top1')}, {e('raw_pixel_linear_top1')}); wall "
        f"{f(ev.get('eval_wall_s'))} s"
    ]


def tests(results: dict) -> list[str]:
    runs = results.get("steps", {}).get("tests", {}).get("runs") or {}
    lines = [f"{label}: {run.get('status')} {json.dumps(run.get('counts', {}))}" for label, run in runs.items()]
    return lines + [f"  {failure}" for run in runs.values() for failure in run.get("failures", [])]


def _number(cell: str) -> float | None:
    try:
        return float(cell.strip().split()[0])
    except (ValueError, IndexError):
        return None


def smi(out: Path) -> list[str]:
    try:
        with open(out / "smi.csv") as fh:
            rows = [r for r in csv.reader(fh) if len(r) > 4 and not r[0].startswith("timestamp")]
    except OSError:
        return []
    util, mem, power = ([v for v in (_number(r[i]) for r in rows) if v is not None] for i in (1, 3, 4))
    if not util:
        return []
    busy = [u for u in util if u > 0]
    return [
        f"nvidia-smi: {len(util)} samples; GPU util mean {statistics.mean(util):.0f}% (non-idle samples "
        f"{statistics.mean(busy) if busy else 0:.0f}%); memory used max {max(mem, default=0):.0f} MiB; power max "
        f"{max(power, default=0):.0f} W"
    ]


PARTS = (device_line, steps_table, checks, benches, train, evaluation, tests)


def bullet(line: str) -> str:
    """Markdown: a table row as it is, an indented line as a sub-item, any other line as an item."""
    if line.startswith("|"):
        return line
    return f"  - {line.strip()}" if line.startswith("  ") else f"- {line}"


def render(results: dict, out: Path) -> str:
    lines = ["# byol GPU check: summary", ""]
    for part in PARTS:
        try:
            body = part(results)
        except Exception as error:  # one part never hides the others
            body = [f"({part.__name__}: cannot be rendered: {type(error).__name__}: {error})"]
        lines += [*map(bullet, body), ""] if body else []
    lines += [bullet(line) for line in smi(out)]
    return "\n".join(lines).rstrip() + "\n"


def run(ctx) -> dict:
    text = render(ctx.results.data, ctx.out)
    (ctx.out / "summary.md").write_text(text)
    ctx.log(text)
    return {"status": "ok", "lines": text.count("\n")}
