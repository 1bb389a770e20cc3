"""The `eval` step: `byol eval --checkpoint <the train step's run>/checkpoint.pt --device cuda --json` (without the
random-init and raw-pixel baselines when under 100 s are left)."""

from __future__ import annotations

from .context import Context
from .setup_env import last_json
from .train import read_json


def run(ctx: Context) -> dict:
    run_dir = ctx.state.get("run_dir") or ctx.work / "run-gpu-preset"
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        return {"status": "skipped", "reason": "no checkpoint from the train step"}
    args = ["-m", "byol", "eval", "--checkpoint", str(checkpoint), "--device", ctx.device, "--json"]
    args += ["--data", str(ctx.fmnist)] if ctx.fmnist else []
    if ctx.budget.left() < 100 or ctx.dry:
        args.append("--no-baselines")
        ctx.log("eval without baselines" + (" (dry run)" if ctx.dry else " (time)"))
    args += ["--linear-epochs", "1"] if ctx.dry else []
    entry, done = ctx.python("eval", args, 40, 150)
    result = read_json(run_dir / "eval.json") or (last_json(done.stdout) if done else None)
    return {"status": entry["status"], "runs": {"eval": entry}, "result": result}
