"""torch.compile's caches go to the user's cache folder, or to TORCHINDUCTOR_CACHE_DIR when the user set it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from byol.runtime import compile_cache

ROOT = Path(__file__).resolve().parents[2]


def test_the_cache_is_in_the_users_cache_folder_unless_torch_is_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.compile_cache_folder() == tmp_path / "xdg" / "byol" / "torch-compile"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.compile_cache_folder() == tmp_path / "home" / ".cache" / "byol" / "torch-compile"
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # torch's own default, written by torch
    assert compile_cache.compile_cache_folder() == tmp_path / "home" / ".cache" / "byol" / "torch-compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache.use_compile_cache() == tmp_path / "mine" and (tmp_path / "mine").is_dir()


@pytest.mark.slow
def test_a_second_process_compiles_from_the_cache(tmp_path):
    # Inductor on the CPU writes C++; the second process must find every graph in the cache (no timing here:
    # docs/performance.md has the seconds, from `byol bench --compile`)
    script = (
        "import torch, json\n"
        "from byol.runtime.compile_cache import use_compile_cache\n"
        "from torch._dynamo.utils import counters\n"
        "use_compile_cache()\n"
        "model = torch.compile(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()))\n"
        "model(torch.randn(4, 8, requires_grad=True)).sum().backward()\n"
        "print(json.dumps(dict(counters['inductor'])))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    runs = [
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        for _ in range(2)
    ]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr[-2000:]
    first, second = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert first.get("fxgraph_cache_miss", 0) > 0 and second.get("fxgraph_cache_miss", 0) == 0
    assert second.get("fxgraph_cache_hit", 0) == first["fxgraph_cache_miss"]
    assert any((tmp_path / "cache" / "byol" / "torch-compile").iterdir())
