"""Where torch.compile keeps what it compiled, so that the second `--compile` of a model starts in seconds.

Inductor's FX graph cache (the generated kernels of each graph), AOTAutograd's cache (the joint forward and
backward graphs) and the autotuning results are on by default in recent torch, but in
/tmp/torchinductor_USER, which a reboot or a cluster job's private /tmp empties. `byol` puts them in the
user's cache folder instead: $XDG_CACHE_HOME/byol/torch-compile, ~/.cache/byol/torch-compile by default.
torch's own TORCHINDUCTOR_CACHE_DIR, when set, wins, and so does a cache switched off with torch's variables.
On a cluster whose home folder is on NFS, point TORCHINDUCTOR_CACHE_DIR at local disk: the cache takes file
locks. What the cache saves: docs/performance.md.
"""

from __future__ import annotations

import os
from pathlib import Path


def compile_cache_folder() -> Path:
    """TORCHINDUCTOR_CACHE_DIR if the user chose one, else the user's cache folder for byol's compiled graphs.
    torch writes its /tmp default into that variable itself (its flop counter does, for one), so the
    default found there is not a choice."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "byol" / "torch-compile"


def use_compile_cache() -> Path:
    """Point torch.compile's caches at `compile_cache_folder()` and switch them on; returns the folder.
    Call before the first compiled call: Inductor reads the folder when it first needs it."""
    import torch._functorch.config as aot_config
    import torch._inductor.config as inductor_config

    folder = compile_cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    # on, unless the user switched one off with torch's own variable
    for config, name, variable in (
        (inductor_config, "fx_graph_cache", "TORCHINDUCTOR_FX_GRAPH_CACHE"),
        (inductor_config, "autotune_local_cache", "TORCHINDUCTOR_AUTOTUNE_LOCAL_CACHE"),
        (aot_config, "enable_autograd_cache", "TORCHINDUCTOR_AUTOGRAD_CACHE"),
    ):
        if variable not in os.environ:
            setattr(config, name, True)
    return folder
