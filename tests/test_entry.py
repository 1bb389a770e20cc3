"""The `byol` command's front door: --version and --help answer without torch, and say what the parser says."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import byol
from byol import entry
from byol.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout


def test_the_static_help_is_what_the_parser_prints(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert build_parser().format_help() == entry.HELP


def test_version_is_the_packages_and_help_and_version_import_no_torch():
    declared = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert byol.__version__ == declared
    out = _fresh(
        "import sys; from byol.entry import main; main(['--version']); main(['--help']); print('torch' in sys.modules)"
    )
    assert out.startswith(f"byol {declared}\n") and "COMMAND" in out and out.strip().endswith("False")


def test_import_byol_is_lazy_and_names_load_on_first_use():
    assert _fresh("import sys, byol; print('torch' in sys.modules)").strip() == "False"
    assert _fresh("import sys, byol; byol.BYOL; print('torch' in sys.modules)").strip() == "True"
    assert set(byol.__all__) <= set(dir(byol)) and sorted(byol.__all__) == sorted(byol._HOMES)
    with pytest.raises(AttributeError, match="no attribute 'Byol'"):
        byol.Byol  # noqa: B018


def test_what_type_checkers_read_is_what_loads_at_run_time():
    import ast

    tree = ast.parse((ROOT / "byol" / "__init__.py").read_text())
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
    imported = {
        alias.name: node.module.removeprefix("byol.")
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == byol._HOMES


def test_a_submodule_is_reachable_after_import_byol_alone():
    out = _fresh("import byol; print(byol.distributed.__name__, hasattr(byol, 'no_such_module'))")
    assert out.split() == ["byol.runtime.distributed", "False"]


def test_everything_else_goes_to_the_full_command_line(tmp_path, capsys):
    assert entry.main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "e")]) == 2
    assert "missing.pt: no such checkpoint" in capsys.readouterr().err
