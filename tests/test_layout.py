"""The tree is the data flow: each stage package imports only from the stages below it, and no module
imports itself back through another (docs/architecture.md)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "byol"
# bottom to top; the modules directly in byol/ (the command line and tools) sit on top of them all
STAGES = ["runtime", "data", "models", "methods", "probes", "training", "evaluation", ""]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every byol module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("byol"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from byol.models import zoo`
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("byol"))
    return found


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES) else ""


def test_every_module_is_in_a_stage_or_is_a_command():
    assert {stage(m) for m in MODULES} <= set(STAGES)
    top = sorted(m for m in MODULES if stage(m) == "" and m != "byol")
    assert len(top) <= 8, top  # a handful of entry modules


def test_each_stage_imports_only_from_the_stages_below_it():
    upward = [
        f"{module} → {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if module != "byol" and STAGES.index(stage(target)) > STAGES.index(stage(module))
    ]
    assert not upward, upward


def test_no_module_imports_itself_back_through_others():
    def cycle_from(start):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in GRAPH[node]:
                if nxt == start:
                    return path
                if nxt not in path and len(path) < len(GRAPH):
                    stack.append((nxt, [*path, nxt]))
        return None

    # `byol/__init__.py` only names its public objects' homes; it loads them lazily.
    cycles = [cycle_from(m) for m in GRAPH if m != "byol" and cycle_from(m)]
    assert not cycles, cycles[0]


def test_the_tree_in_the_docs_names_every_module():
    tree = (ROOT.parent / "docs" / "architecture.md").read_text()
    missing = [
        str(path.relative_to(ROOT.parent))
        for path in sorted(ROOT.rglob("*.py"))
        if not re.search(rf"^\s+{re.escape(path.name)}\s", tree, re.MULTILINE)
    ]
    assert not missing, f"docs/architecture.md does not list {missing}"
