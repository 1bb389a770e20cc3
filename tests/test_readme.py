"""The README's Python example runs as written, and docs/api.md's table states the code's real signatures."""

import inspect
import re
from pathlib import Path

import torch
import torchvision

import byol

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README.split("## From Python", 1)[1].split("\n## ", 1)[0]
API_TABLE = [line for line in (ROOT / "docs" / "api.md").read_text().splitlines() if line.startswith("| `byol.")]


def test_the_python_example_runs_as_written(tmp_path, monkeypatch):
    example = re.search(r"```python\n(.*?)```", SECTION, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    scope = {}
    # the README's own code, under test
    exec(compile(example, "README.md", "exec"), scope)
    assert scope["step"] == scope["total_steps"] == 4 and torch.isfinite(scope["loss"])
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load(tmp_path / "resnet18-byol.pt", weights_only=True))  # strict: every key fits


def _shown(value) -> str:
    """A default as the table shows it: its repr, or the public constant it is (VIEW1, …)."""
    for name in byol.__all__:
        constant = getattr(byol, name)
        if not callable(constant) and constant is value:
            return name
    return repr(value)


def signature_text(obj) -> str:
    parameters = list(inspect.signature(obj).parameters.values())
    parts, keyword_only_marked = [], False
    for index, parameter in enumerate(parameters):
        if parameter.kind is parameter.VAR_POSITIONAL:
            parts.append(f"*{parameter.name}")
            keyword_only_marked = True
        elif parameter.kind is parameter.VAR_KEYWORD:
            parts.append(f"**{parameter.name}")
        else:
            if parameter.kind is parameter.KEYWORD_ONLY and not keyword_only_marked:
                parts.append("*")
                keyword_only_marked = True
            default = "" if parameter.default is parameter.empty else f"={_shown(parameter.default)}"
            parts.append(parameter.name + default)
            following = parameters[index + 1].kind if index + 1 < len(parameters) else None
            if parameter.kind is parameter.POSITIONAL_ONLY and following is not parameter.POSITIONAL_ONLY:
                parts.append("/")
    return ", ".join(parts)


def test_every_call_in_the_api_table_has_the_real_signature():
    calls = re.findall(r"`byol\.(\w+)\(([^`]*)\)`", "\n".join(API_TABLE))
    assert len(calls) >= 30
    wrong = {
        name: (shown, signature_text(getattr(byol, name)))
        for name, shown in calls
        if shown != signature_text(getattr(byol, name))
    }
    assert not wrong, wrong


def test_every_public_name_is_in_the_api_table():
    mentioned = set(re.findall(r"`byol\.(\w+)", "\n".join(API_TABLE)))
    assert set(byol.__all__) <= mentioned, set(byol.__all__) - mentioned
    assert mentioned <= set(byol.__all__), mentioned - set(byol.__all__)


def _documented_train_commands(text: str) -> list[list[str]]:
    """`byol train …` command lines in a markdown file's bash blocks (continuations joined, $VARS expanded)."""
    import shlex

    commands, variables = [], {}
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            assignment = re.match(r'^(\w+)="(.*)"$', line)
            if assignment:
                variables[assignment.group(1)] = assignment.group(2)
                continue
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            words = shlex.split(line) if "byol train" in line or "-m byol train" in line else []
            if words:
                commands.append(words[words.index("train") + 1 :])
    return commands


def test_the_imagenet_recipes_are_valid_commands():
    from byol.cli import build_parser, config_from_args

    commands = _documented_train_commands((Path(__file__).resolve().parents[1] / "docs" / "imagenet.md").read_text())
    assert len(commands) == 5
    for arguments in commands:
        config = config_from_args(build_parser().parse_args(["train", *arguments]))
        assert config.image_size == 224 and config.dataset == "folder"
