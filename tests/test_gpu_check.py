"""benchmarks/gpu_check, the GPU check: its plumbing (budget, signals, failures.log, knobs, summary), and a dry
run of every step on the CPU at toy sizes, the graphs and compile steps on their CPU stand-ins (a fake
torch.cuda graph API; torch.compile's "eager" backend)."""

import json
import sys

import pytest

from benchmarks.gpu_check import compile_bench, cuda_tests, run, summary, train
from benchmarks.gpu_check.context import ALL_STEPS, aggregate, parse_knobs
from benchmarks.gpu_check.runner import Budget, Log, run_process
from benchmarks.gpu_check.setup_env import copy_idx
from byol.bench import format_result
from byol.data.datasets import load_fashion_mnist
from tests.conftest import make_fashion_like


def test_knobs_come_from_the_environment_and_a_flag_wins():
    knobs = parse_knobs(["--budget-s", "300"], {"BUDGET_S": "200", "TRAIN_S": "60", "DRY": "1"})
    assert knobs.budget_s == 300 and knobs.train_s == 60 and knobs.dry
    assert knobs.device == "cpu" and knobs.cap_scale == 3  # a dry run runs on the CPU, slower
    default = parse_knobs([], {})
    assert default.budget_s == 510 and default.device == "cuda" and default.steps == list(ALL_STEPS)
    assert default.cap_scale == 1 and default.runs == ["*"]
    with pytest.raises(SystemExit):
        parse_knobs(["--steps", "setup,nonsense"], {})


def test_a_child_limit_keeps_its_kill_grace_inside_the_budget():
    clock = [0.0]
    budget = Budget(510, clock=lambda: clock[0])
    assert budget.limit(120, grace=20) == 120
    clock[0] = 450  # 60 s left: the child gets 35 s, then 20 s of grace, and 5 s to spare
    assert budget.limit(120, grace=20) == 35


REPORTS_ON_SIGINT = """
import signal, sys, time
def report(*_):
    print("the failure report", flush=True)
    sys.exit(3)
signal.signal(signal.SIGINT, report)
print("up", flush=True)
time.sleep(60)
"""
IGNORES_SIGINT = (
    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
)


def test_a_child_past_its_limit_gets_sigint_so_it_can_still_report(tmp_path):
    log = Log(tmp_path / "log.txt", echo=False)
    done = run_process([sys.executable, "-c", REPORTS_ON_SIGINT], 3, log, grace=6)
    log.close()
    assert done.status == "timeout" and done.rc == 3
    assert "the failure report" in done.stdout and "the failure report" in (tmp_path / "log.txt").read_text()


def test_a_child_deaf_to_sigint_is_killed_after_the_grace(tmp_path):
    log = Log(tmp_path / "log.txt", echo=False)
    done = run_process([sys.executable, "-c", IGNORES_SIGINT], 2, log, grace=2)
    assert done.status == "timeout" and done.rc == -9 and done.seconds < 15


def make_context(tmp_path, *flags):
    argv = ["--py", sys.executable, "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *flags]
    return run.make_context(argv, {})


def test_a_failed_run_leaves_its_whole_stderr_in_failures_log(tmp_path):
    ctx = make_context(tmp_path)
    noisy = "import sys\nfor i in range(300): print(f'line {i}', file=sys.stderr)\nsys.exit(1)"
    entry, done = ctx.python("noisy", ["-c", noisy], 0, 30)
    ctx.log.close()
    assert entry["status"] == "failed" and entry["rc"] == 1 and len(done.stderr) == 300
    failures = (tmp_path / "out/failures.log").read_text()
    assert "==== noisy: failed" in failures and "line 0\n" in failures and "line 299\n" in failures


def test_runs_and_steps_are_skipped_when_time_is_short_or_deselected(tmp_path):
    ctx = make_context(tmp_path, "--runs", "r18-*")
    assert ctx.python("tests-auto", ["-c", "pass"], 0, 30)[0] == {"status": "deselected"}
    ctx.budget = Budget(100)
    assert ctx.python("r18-x", ["-c", "pass"], 200, 30)[0]["status"] == "skipped"
    assert compile_bench.run(ctx)["status"] == "skipped"  # compilation needs 150 s; it never starts short
    ctx.log.close()
    assert aggregate({"a": {"status": "ok"}, "b": {"status": "deselected"}}) == "ok"
    assert aggregate({"a": {"status": "ok"}, "b": {"status": "skipped"}}) == "partial"
    assert aggregate({"a": {"status": "ok"}, "b": {"status": "timeout"}}) == "failed"


def test_pytest_counts_and_epoch_sizing():
    assert cuda_tests.counts(["x", "==== 2 failed, 5 passed, 1 skipped, 1 error in 3.21s ===="]) == {
        "failed": 2,
        "passed": 5,
        "skipped": 1,
        "error": 1,
    }
    # 117 steps of 512 at 6,000 images/s, +5%, +0.2 s: 10.7 s an epoch, 95 s to fill after 25 s of start-up
    assert train.size_epochs(6000.0, 120) == (8, 0.8)
    assert train.size_epochs(None, 10) == (1, 0.5)


def test_a_dry_run_trains_on_the_first_images_of_fashion_mnist(tmp_path):
    source = make_fashion_like(tmp_path / "full")
    target = tmp_path / "small"
    target.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        copy_idx(source / f"{name}.gz", target / f"{name}.gz", 10)
    small, full = load_fashion_mnist(str(target), "train", False), load_fashion_mnist(str(source), "train", False)
    assert len(small) == 10 and small.images.equal(full.images[:10]) and small.labels.equal(full.labels[:10])


def test_the_summary_renders_whatever_is_missing(tmp_path):
    assert summary.render({}, tmp_path).startswith("# byol GPU check: summary")
    odd = {"steps": {"checks": {"status": "failed", "sections": {"syncs": {"error": "boom"}, "whatif": None}}}}
    text = summary.render(odd, tmp_path)
    assert "- syncs: boom" in text and "| checks | failed |" in text


def test_a_graphed_bench_gives_no_augment_share_of_its_step():
    result = {
        "device": "cpu", "backbone": "resnet18", "width": 1.0, "image_size": 32, "batch_size": 8,
        "precision": "float32", "channels_last": True, "compile": False, "cuda_graphs": True,
        "precision_choice": "fp32", "ms_per_step": 10.0, "images_per_s": 800.0, "augment_ms_per_step": 2.0,
        "augment_fraction": None, "flops_per_image": None, "peak_flops": 1e12, "peak_kind": "matmul",
        "peak_rss_mb": 1.0, "compare": {},
    }  # fmt: skip
    assert "augment      2.0 ms per step (timed alone, eagerly)" in format_result(result)
    assert "augment      2.0 ms per step (20.0%)" in format_result({**result, "augment_fraction": 0.2})


def dry_run(tmp_path, runs: str, sections: str) -> dict:
    """The check with DRY=1 on a Fashion-MNIST look-alike; every step must end ok."""
    fashion = make_fashion_like(tmp_path / "fashion")
    out = tmp_path / "out"
    flags = ["--dry", "1", "--fmnist", str(fashion), "--budget-s", "1500", "--runs", runs, "--sections", sections]
    rc = run.main(["--py", sys.executable, "--out", str(out), "--work", str(tmp_path / "work"), *flags], {})
    results = json.loads((out / "results.json").read_text())
    statuses = {name: step["status"] for name, step in results["steps"].items()}
    failures = (out / "failures.log").read_text() if (out / "failures.log").exists() else ""
    assert statuses == dict.fromkeys((*ALL_STEPS, "summary"), "ok"), failures[-5000:]
    assert rc == 0
    text = (out / "summary.md").read_text()
    assert all(f"| {name} | ok |" in text for name in ALL_STEPS) and "cuda graphs: step" in text
    files = {path.name for path in out.iterdir()}
    assert {"results.json", "log.txt", "summary.md"} <= files and len(files) <= 8
    return results


LEAN_RUNS = "checks,r18-32px-b512,graphs-profile,train,eval,tests-graphs,r18-32px-b512-compile-graphs"
LEAN_SECTIONS = "env,data,decode,graphs,syncbn"  # graphs runs the profiler too


def test_a_dry_run_of_every_step_ends_ok_and_summarises(tmp_path):
    """One run of each step: 71 s on two cores at a load of 4, 3 to 4 minutes at 8 (the slow test runs them all)."""
    results = dry_run(tmp_path, LEAN_RUNS, LEAN_SECTIONS)
    graphs = results["steps"]["graphs"]["sections"]["graphs"]
    assert graphs["captures"] == 1 and "stand_in" in graphs and graphs["profile"]["gpu_kernels_per_step"] > 0
    compiled = results["steps"]["compile"]["runs"]["r18-32px-b512-compile-graphs"]["result"]
    assert compiled["compile"] and any("eager" in used for used in compiled["stand_in"])
    assert results["steps"]["tests"]["runs"]["tests-graphs"]["counts"]["skipped"] > 0  # -m cuda, on a CPU
    assert results["steps"]["eval"]["result"]["knn_top1"] > 0


@pytest.mark.slow
def test_a_full_dry_run_ends_ok(tmp_path):
    """Every run of every step and every section: 5 minutes on two cores at a load of 3.5, 9 at 5 to 7."""
    results = dry_run(tmp_path, "*", "")
    assert set(results["steps"]["checks"]["sections"]) >= {"syncs", "profile", "phases", "whatif", "parity", "ceilings"}
    assert (tmp_path / "out/trace.json.gz").stat().st_size > 0
