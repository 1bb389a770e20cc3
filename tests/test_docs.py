"""Every command and Python line in README.md and docs/*.md runs here, or is marked beside it as not run,
with the reason.

What is collected (an *item* each, named `FILE:LINE` in the test ids):
- fenced blocks (```bash, ```sh, ```python, ```yaml and unlabelled ones; ```text is a picture, left out). In a
  shell block each command line is an item: `\\` continuations joined, `# comments` dropped, `NAME="..."`
  assignments expanded into the lines after them. A python or yaml block is one item.
- inline code spans in prose, lists and tables that are whole commands: `byol` with a subcommand and an
  argument (`byol train --help`) or an option (`byol --version`); another program with an argument
  (`pip install ...`, `bash scripts/test.sh -m slow`); a call `byol.NAME(...)` with arguments, maybe
  assigned (`encoder = byol.load_encoder("runs/photos")`). Not commands: bare names (`byol eval`,
  `--lr`, `byol.BYOL`) and spans with an elision (`…` or `...`).

Markers: HTML comments, which render as nothing. `REASON` may not be empty.
- `<!-- not run: REASON -->` on the line just above a fence (no blank line): the whole block.
- `<!-- not run `PREFIX`, `PREFIX2`: REASON -->` just above a fence: the block's command lines that
  start with a PREFIX. Inside a paragraph, list or table: its command spans that start with a PREFIX
  (without prefixes: all of them). A paragraph made of markers only applies to the paragraph just
  before it, so a table gets its marker after a blank line and renders untouched.
- `<!-- not a command `PREFIX`: REASON -->`, same placement: a span that names an option or a form
  (`byol bench --compare`, `torchrun --nnodes`) rather than a command to type.
- `<!-- run by tests/FILE.py: WHAT -->`, same placement: another test runs or checks it (that file
  must name this doc), so it is not run twice here.
- `<!-- excerpt of PATH: WHAT -->` above a block: the block must be a verbatim excerpt of PATH.
Several markers may stand above one fence. A marker that covers nothing, is malformed or has no reason
fails `test_markers_have_a_reason_and_cover_something`; an item neither run nor marked fails its case.
A `not run` byol command (also under `torchrun -m byol`, `python -m byol`) is still parsed, and a
`byol train` one resolved to its config, and a deprecated name fails it: a marker exempts from
running, not from being a valid command. `not run` Python must still compile.

How items run: each in a fresh working folder, with HOME at a module folder holding `~/photos`, a
labelled image folder (train/ and test/, 3 classes of small PNGs), and `my.yaml` and `r50.yaml` beside
it. `byol` commands run in-process through `byol.entry.main` (the `byol` command's own entry point)
and must exit 0 (`--help` included). A shell's work is done first: `~` expanded, and absolute `--out`
and `--checkpoint` paths (`/tmp/vitsmoke`) re-rooted inside the working folder. `python SCRIPT ARGS`
of a script in the repository runs in-process too. `byol ablate` is refused unless marked: no
override makes a suite cheap (tests/test_ablate.py runs the suites on a tiny config).
- Run folders: the folder a `--checkpoint` names (or the folder of the file it names) is a copy of a
  fixture run made once per module by `byol train` itself, 2 steps on `~/photos` (ResNet-18 × 0.125 at
  16 px; for `byol export --format torchvision/timm` one at width 1 with the ImageNet stem at 32 px,
  which those libraries' classes hold). A command whose `--data` is Fashion-MNIST gets a Fashion-MNIST
  run. `--out DIR --resume` with no option that changes what a run learns continues DIR, a copy of
  the photo run stopped after its first step; beside such options it starts DIR fresh, as its first
  launch would. Python code gets a copy of the photo run under every `runs/NAME` it mentions.
- `--data PATH` that does not exist and is relative (`DIR`, `.data/fashion-mnist`) is a link to the
  photo folder, or to a tiny Fashion-MNIST-like dataset (tests/conftest.py) when PATH names
  fashion-mnist. A `byol train` whose dataset is Fashion-MNIST and that names no data gets
  `--data` that dataset.
- Overrides appended after the command as written, so they win (argparse keeps the last value):
  `byol train` gets TRAIN_OVERRIDES (those its --method takes): 1 step of a 1/8-width network at 16 px
  on 16 images, no kNN monitor, no decoding processes, on the CPU. The documented values are still
  parsed and, before that, resolved and validated as written (`config_from_args` on the command as
  it stands). A resumed run gets none (its own config.yaml; a changed option would be refused).
  `byol eval` gets 1 epoch of linear probe and of fine-tune, `eval`/`embed` no decoding processes and
  the CPU, `byol bench` 1 timed step of the tiny network, its roof (the FLOP/s it divides by, a
  property of the machine) measured once per precision for 0.02 s instead of 2 s. A `--device cuda`
  command so runs its options on the CPU; what needs the GPU itself is marked. Precision is left as
  written. torch runs one thread here: on 2 shared cores a second one's waits cost more than these
  steps.
- Placeholders: `COMMAND` runs as each command (`byol COMMAND --help`), `NAME` as `simclr` (the methods
  suite of tests/test_ablate.py trains each), `S` as seed 0, `FLAGS` (a row's own options) as none.
  Other capitals are literal names (`--out RUN` is a folder RUN).
- Python (blocks and spans) is exec'd with the names a snippet leaves to its reader: `byol`, `torch`,
  `torchvision`, `timm`, `safetensors`, `backbone` (the README's resnet18 with fc = Identity), `images`
  (2 float images, 3 × 32 × 32), `mean`/`std` (ImageNet's), `path` ("runs/x"). yaml blocks are
  resolved as a `--config` file.
- A command that, once parsed with its overrides, equals one run before in this module shares its
  result (the bench lines of docs/performance.md differ mostly in sizes the overrides replace).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import make_fashion_like

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE_OPEN = re.compile(r"^\s*```\s*([\w+-]*)\s*$")
FENCE_CLOSE = re.compile(r"^\s*```\s*$")
COMMENT = re.compile(r"^\s*<!--(.*?)-->\s*$")
MARKER = re.compile(
    r"(?P<verb>not run|not a command|run by|excerpt of)(?: (?P<target>[\w./-]+))?"
    r"(?P<prefixes>(?:\s*,?\s*`[^`]+`)*)\s*:(?P<reason>.*)",
    re.DOTALL,
)
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
PROGRAMS = {"byol", "python", "python3", "pip", "bash", "sh", "torchrun", "tensorboard", "git", "pytest", "ruff"}
PROGRAMS |= {"srun", "sbatch", "apt", "apt-get", "sudo", "mkdir", "cp", "cd", "curl", "wget", "docker", "time"}
ENVIRONMENT = re.compile(r"^(?:\w+=(?:<[^>]*>|\S*)\s+)+")  # VAR=value words before a program
RUNNABLE = ("train", "eval", "embed", "export", "bench")  # what the overrides make cheap: not `byol ablate`
PYTHON_CALL = re.compile(r"^(?:\w+\s*=\s*)?byol\.[\w.]+\((?=.*[^)\s]).*\)$")
ASSIGNMENT = re.compile(r"^\w+=")
PLACEHOLDERS = {
    "COMMAND": ("train", "eval", "embed", "bench", "ablate", "export"),
    "NAME": ("simclr",),
    "S": ("0",),
    "FLAGS": ("",),  # the row's own options: none
}

TRAIN_OVERRIDES = {
    "subset": "16",
    "batch_size": "8",
    "epochs": "1",
    "stop_after_steps": "1",
    "width": "0.125",
    "image_size": "16",
    "projection_dim": "16",
    "projector_hidden_dim": "32",
    "predictor_hidden_dim": "32",
    "knn_every": "0",
    "workers": "0",
    "device": "cpu",
}
EVAL_OVERRIDES = ["--linear-epochs", "1", "--semi-epochs", "1", "--workers", "0", "--device", "cpu"]
EMBED_OVERRIDES = ["--workers", "0", "--device", "cpu"]
BENCH_OVERRIDES = ["--steps", "1", "--warmup", "0", "--width", "0.125", "--image-size", "16", "--batch-size", "8"]
BENCH_OVERRIDES += ["--device", "cpu"]
CONFIG_FILES = {
    "my.yaml": {"backbone": "resnet18", "epochs": 10, "base_tau": 0.99},
    "r50.yaml": {"backbone": "resnet50", "image_size": 224, "dataset": "folder", "data": "/shared/imagenet"},
}


# ---------------------------------------------------------------- reading the docs


@dataclass
class Marker:
    doc: str
    line: int
    verb: str
    target: str | None
    prefixes: tuple[str, ...]
    reason: str
    covered: list = field(default_factory=list)

    def covers(self, text: str) -> bool:
        return not self.prefixes or any(text.startswith(p) for p in self.prefixes)


@dataclass
class Item:
    doc: str
    line: int
    kind: str  # shell, python, yaml; span-shell, span-python
    text: str
    words: list[str] = field(default_factory=list)
    marker: Marker | None = None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    def __str__(self) -> str:
        return f"{self.id}: {self.text}"


def parse_marker(doc: str, line: int, comment: str, problems: list[str]) -> Marker | None:
    text = " ".join(comment.split())
    if not text.startswith(("not ", "run by", "excerpt of", "not-run", "notrun")):
        return None  # an ordinary comment
    match = MARKER.fullmatch(text)
    if not match or (match["verb"] in ("run by", "excerpt of")) != bool(match["target"]):
        problems.append(f"{doc}:{line}: malformed marker <!--{comment}-->")
        return None
    if not match["reason"].strip():
        problems.append(f"{doc}:{line}: marker without a reason <!--{comment}-->")
        return None
    prefixes = tuple(re.findall(r"`([^`]+)`", match["prefixes"]))
    return Marker(doc, line, match["verb"], match["target"], prefixes, match["reason"].strip())


def command_span(span: str) -> str | None:
    """'shell' or 'python' when an inline code span is a whole command, else None."""
    span = " ".join(span.split())
    if "…" in span or "..." in span:
        return None
    if PYTHON_CALL.match(span):
        return "python"
    words = ENVIRONMENT.sub("", span).split()
    if not words:
        return None
    if words[0] == "byol":
        return "shell" if len(words) >= 3 or (len(words) == 2 and words[1].startswith("-")) else None
    return "shell" if Path(words[0]).name in PROGRAMS and len(words) >= 2 else None


def shell_items(doc: str, first_line: int, body: list[str]) -> list[Item]:
    items, variables, logical, buffer, start = [], {}, [], "", None
    for number, raw in enumerate(body, first_line):
        start = number if start is None else start
        if raw.rstrip().endswith("\\"):
            buffer += raw.rstrip()[:-1] + " "
            continue
        logical.append((start, buffer + raw))
        buffer, start = "", None
    for number, text in logical:
        words = shlex.split(text, comments=True)
        if not words:
            continue
        if len(words) == 1 and ASSIGNMENT.match(words[0]) and "$(" not in text and "`" not in text:
            name, value = words[0].split("=", 1)  # NAME="value": no command of its own; expanded in later lines
            variables[name] = value
            continue
        for name, value in variables.items():
            text = re.sub(rf"\$(?:{name}\b|\{{{name}\}})", lambda _m, v=value: v, text)
        words = shlex.split(text, comments=True)
        items.append(Item(doc, number, "shell", " ".join(words), words))
    return items


FENCE = object()


@functools.cache
def parse_doc(path: Path) -> tuple[list[Item], list[Marker], list[str]]:
    doc = path.relative_to(ROOT).as_posix()
    items, markers, problems = [], [], []
    prose = parse_fences(doc, path.read_text().splitlines(), items, markers, problems)
    parse_prose(doc, paragraphs_of(prose), items, markers, problems)
    return items, markers, problems


def parse_fences(doc: str, lines: list[str], items: list, markers: list, problems: list[str]) -> list:
    """The fenced blocks' items and markers, into `items` and `markers`; returns the lines outside fences as
    (number, text), None for a blank line and FENCE for a block, both of which end a paragraph."""
    prose: list = []
    index = 0
    while index < len(lines):
        opened = FENCE_OPEN.match(lines[index])
        if not opened:
            prose.append((index + 1, lines[index]) if lines[index].strip() else None)
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not FENCE_CLOSE.match(lines[end]):
            end += 1
        body, first = lines[index + 1 : end], index + 2
        above = []
        while prose and prose[-1] is not None and COMMENT.match(prose[-1][1]):
            above.append(prose.pop())
        block_markers = [m for n, t in reversed(above) if (m := parse_marker(doc, n, COMMENT.match(t)[1], problems))]
        markers += block_markers
        language = opened[1].lower()
        if language == "text":  # a picture (the tree), nothing to run
            block = []
        elif language in ("python", "py", "yaml", "yml"):
            block = [Item(doc, first, "python" if language.startswith("py") else "yaml", "\n".join(body))]
        else:
            block = shell_items(doc, first, body)
        for item in block:
            item.marker = next((m for m in block_markers if m.covers(item.text)), None)
        for marker in block_markers:
            marker.covered += [i for i in block if i.marker is marker]
        items += block
        prose.append(FENCE)
        index = end + 1
    return prose


def paragraphs_of(prose: list) -> list:
    paragraphs, current = [], []
    for entry in [*prose, None]:
        if entry is None or entry is FENCE:
            if current:
                paragraphs.append(current)
            if entry is FENCE:
                paragraphs.append(FENCE)
            current = []
        else:
            current.append(entry)
    return paragraphs


def parse_prose(doc: str, paragraphs: list, items: list, markers: list, problems: list[str]) -> None:
    """The command spans of each paragraph and the markers that cover them, into `items` and `markers`."""
    previous: list[Item] = []
    for paragraph in paragraphs:
        if paragraph is FENCE:  # a marker below a block is not the paragraph above the block's
            previous = []
            continue
        own = [m for n, t in paragraph if (c := COMMENT.match(t)) and (m := parse_marker(doc, n, c[1], problems))]
        markers += own
        content = [(n, t) for n, t in paragraph if not COMMENT.match(t)]
        spans = []
        if content:
            text = "\n".join(t for _, t in content)
            for match in SPAN.finditer(text):
                kind = command_span(match[1])
                if kind:
                    number = content[text.count("\n", 0, match.start())][0]
                    spans.append(Item(doc, number, f"span-{kind}", " ".join(match[1].split())))
            items += spans
            previous = spans
        for marker in own:  # a paragraph of markers only covers the paragraph before it
            for item in spans if content else previous:
                if item.marker is None and marker.covers(item.text):
                    item.marker = marker
                    marker.covered.append(item)


def all_items() -> list[Item]:
    return [item for path in DOCS for item in parse_doc(path)[0]]


def unmarked() -> list[Item]:
    return [item for item in all_items() if item.marker is None]


def marked_byol_commands() -> list:
    found = []
    for item in all_items():
        if item.marker is None or item.marker.verb != "not run" or not item.kind.endswith("shell"):
            continue
        argv = byol_argv(item.words or shlex.split(item.text))
        if argv is not None:
            found.append(pytest.param(item, argv, id=item.id))
    return found


def byol_argv(words: list[str]) -> list[str] | None:
    """The arguments of `byol`, also when torchrun, srun or `python -m byol` launches it; else None."""
    for index, word in enumerate(words):
        if Path(word).name != "byol":
            continue
        if index == 0 or "/" in word or words[index - 1] in ("-m", "--no-python") or "=" in words[index - 1]:
            return words[index + 1 :]
    return None


# ---------------------------------------------------------------- fixtures


def make_photos(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for label in ("cats", "dogs", "owls"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


def invoke(argv: list[str]) -> tuple[int, str]:
    """`byol ARGV` in this process: (exit status, stdout + stderr)."""
    from byol.entry import main

    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            status = main(list(argv))
        except SystemExit as exit:  # argparse: --help, or a bad option
            status = exit.code if isinstance(exit.code, int) else 1
    return status, output.getvalue()


@dataclass
class Fixtures:
    home: Path
    photos: Path
    fashion: Path
    photo_run: Path  # ResNet-18 × 0.125 at 16 px on ~/photos, finished
    stopped_run: Path  # the same, stopped after its first step
    wide_run: Path  # ResNet-18 at width 1 with the ImageNet stem at 32 px: what torchvision's and timm's classes hold
    fashion_run: Path  # ResNet-18 × 0.125 on the Fashion-MNIST-like data
    results: dict = field(default_factory=dict)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on 2 shared cores, a second thread's waits cost more CPU than these tiny steps."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """HOME for the documented commands: `~/photos`, the labelled image folder."""
    home = tmp_path_factory.mktemp("home")
    make_photos(home / "photos")
    return home


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, home) -> Fixtures:
    root = tmp_path_factory.mktemp("docs")
    photos = home / "photos"
    fashion = make_fashion_like(root / "fashion-mnist", train=256, test=64)
    tiny_heads = ["--projection-dim", "16", "--projector-hidden-dim", "32", "--predictor-hidden-dim", "32"]
    common = [*tiny_heads, "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0.5", "--knn-every", "0"]
    common += ["--workers", "0", "--device", "cpu", "--precision", "fp32", "--quiet"]
    runs = root / "runs"
    photo = ["--dataset", "folder", "--data", str(photos)]
    small = ["--width", "0.125", "--image-size", "16"]
    for argv in (
        ["train", *photo, *small, *common, "--stop-after-steps", "1", "--out", str(runs / "stopped")],
        ["train", *photo, "--stem", "imagenet", "--image-size", "32", *common, "--out", str(runs / "wide")],
        ["train", "--data", str(fashion), "--subset", "16", *small, *common, "--out", str(runs / "fashion")],
    ):
        status, output = invoke(argv)
        assert status == 0, output
    shutil.copytree(runs / "stopped", runs / "photos")
    status, output = invoke(["train", "--out", str(runs / "photos"), "--resume", "--quiet"])
    assert status == 0 and (runs / "photos" / "backbone.safetensors").is_file(), output
    return Fixtures(home, photos, fashion, runs / "photos", runs / "stopped", runs / "wide", runs / "fashion")


def copy_run(source: Path, destination: Path) -> None:
    """A run folder of its own: big files hard-linked (byol replaces files by renaming, never in place)."""

    def link_or_copy(src, dst):
        if os.path.getsize(src) > 1 << 20:
            try:
                return os.link(src, dst)
            except OSError:
                pass
        return shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=link_or_copy)


@pytest.fixture
def workdir(tmp_path, monkeypatch, home) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for name, values in CONFIG_FILES.items():
        (cwd / name).write_text(yaml.safe_dump(values))
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    import byol.bench

    measure = byol.bench.peak_flops  # `byol bench`'s roof, a property of the machine: measured once, for 0.02 s

    def peak_flops(device, dtype, **_):
        key = (str(device), dtype)
        if key not in ROOFS:
            ROOFS[key] = measure(device, dtype, seconds=0.02)
        return ROOFS[key]

    monkeypatch.setattr(byol.bench, "peak_flops", peak_flops)
    return cwd


ROOFS: dict = {}


# ---------------------------------------------------------------- running an item


def option(argv: list[str], name: str) -> str | None:
    values = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == name]
    return values[-1] if values else None


def replace_option(argv: list[str], name: str, value: str) -> list[str]:
    return [value if i and argv[i - 1] == name else word for i, word in enumerate(argv)]


def prepare(argv: list[str], fx: Fixtures, cwd: Path) -> list[str]:
    """The command as run: the shell's expansions, its fixtures in place, the cheap overrides appended."""
    from byol.cli import build_parser, config_from_args
    from byol.training.config import FIELDS, flag, method_option_users

    argv = [os.path.expanduser(word) if word.startswith("~") else word for word in argv]
    if not argv or argv[0].startswith("-") or "--help" in argv or "-h" in argv:
        return argv
    for name in ("--out", "--checkpoint"):
        value = option(argv, name)
        if value and Path(value).is_absolute() and not Path(value).exists():
            argv = replace_option(argv, name, str(cwd / value.lstrip("/")))
    data = option(argv, "--data")
    fashion = bool(data) and "fashion" in data
    if data and not Path(data).is_absolute() and not Path(data).exists():
        (cwd / data).parent.mkdir(parents=True, exist_ok=True)
        (cwd / data).symlink_to(fx.fashion if fashion else fx.photos)
    command = argv[0]
    if command in ("eval", "embed", "export"):
        checkpoint = Path(option(argv, "--checkpoint") or ".")
        folder = checkpoint.parent if checkpoint.suffix else checkpoint
        if not folder.exists():
            wide = command == "export" and option(argv, "--format") in ("torchvision", "timm")
            copy_run(fx.fashion_run if fashion else fx.wide_run if wide else fx.photo_run, folder)
        return argv + {"eval": EVAL_OVERRIDES, "embed": EMBED_OVERRIDES, "export": []}[command]
    if command == "bench":
        return argv + BENCH_OVERRIDES
    if command != "train":
        return argv
    with contextlib.redirect_stderr(io.StringIO()):  # a bad option: run_byol reports it
        args = build_parser().parse_args(argv)
    given = [name for name in FIELDS if getattr(args, name) is not None]
    alone = args.resume and args.out and not args.preset and not args.config
    alone = alone and not any(FIELDS[name].metadata["trajectory"] for name in given)
    if alone and not Path(args.out).exists():
        copy_run(fx.stopped_run, Path(args.out))
    config = config_from_args(args)  # the command as written, validated: a UserError fails the item
    if alone:
        return argv
    users = method_option_users()
    extra = []
    for name, value in TRAIN_OVERRIDES.items():
        if name not in users or config.method in users[name]:
            extra += [flag(name), value]
    if config.dataset == "fashion-mnist" and config.data is None:
        extra += ["--data", str(fx.fashion)]
    return argv + extra


def parsed(argv: list[str]) -> tuple:
    """What a command means once parsed (two spellings of one command share a result); argv when it does not parse."""
    from byol.cli import build_parser

    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            args = vars(build_parser().parse_args(argv))
    except SystemExit:
        return tuple(argv)
    return tuple(sorted((name, repr(value)) for name, value in args.items()))


def run_byol(argv: list[str], fx: Fixtures, cwd: Path) -> None:
    from byol.runtime.errors import UserError

    for name, values in PLACEHOLDERS.items():
        if name in argv:
            for value in values:
                run_byol([word for word in (value if w == name else w for w in argv) if word], fx, cwd)
            return
    problem = None
    try:
        final = prepare(argv, fx, cwd)
    except UserError as error:
        problem = f"byol: error: {error}"
    except SystemExit:
        problem = invoke(argv)[1].strip()
    if problem:
        pytest.fail(f"byol {shlex.join(argv)}\nas written: {problem}", pytrace=False)
    key = parsed(final)
    if key not in fx.results:
        fx.results[key] = invoke(final)
    status, output = fx.results[key]
    if status != 0:
        pytest.fail(f"byol {shlex.join(final)}\nexit status {status}:\n{output[-3000:]}", pytrace=False)


def reader_names() -> dict:
    """The names a snippet leaves to its reader."""
    import safetensors.torch
    import timm
    import torch
    import torchvision

    import byol

    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    return {
        "byol": byol,
        "torch": torch,
        "torchvision": torchvision,
        "timm": timm,
        "safetensors": safetensors,
        "backbone": backbone,
        "images": torch.rand(2, 3, 32, 32),
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "path": "runs/x",
    }


def run_python(item: Item, fx: Fixtures) -> None:
    mentioned = set(re.findall(r"\bruns/[\w.-]+", item.text)) | ({"runs/x"} if "path" in item.text else set())
    for run in sorted(mentioned):
        copy_run(fx.photo_run, Path(run))
    exec(compile(item.text, item.id, "exec"), reader_names())


def run_item(item: Item, fx: Fixtures, cwd: Path) -> None:
    if item.kind == "yaml":
        from byol.training.config import resolve

        (cwd / "block.yaml").write_text(item.text)
        resolve(config_file=str(cwd / "block.yaml"))
        return
    if item.kind in ("python", "span-python"):
        run_python(item, fx)
        return
    words = item.words or shlex.split(item.text)
    argv = byol_argv(words)
    if argv is not None and (words[0] == "byol" or words[1:3] == ["-m", "byol"]):
        if argv and not argv[0].startswith("-") and argv[0] not in RUNNABLE and "--help" not in argv:
            pytest.fail(
                f"{item}\nbyol {argv[0]} is not made cheap here: mark it not run, with the reason", pytrace=False
            )
        run_byol(argv, fx, cwd)
    elif words[0] in ("python", "python3") and len(words) > 1 and (ROOT / words[1]).is_file():
        run_script(ROOT / words[1], words[2:])
    else:
        pytest.fail(
            f"{item}\nneither run nor marked: only `byol` commands and the repository's Python scripts run here; "
            "mark it <!-- not run: REASON --> above its block, or in its paragraph (docstring of tests/test_docs.py)",
            pytrace=False,
        )


def run_script(script: Path, arguments: list[str]) -> None:
    """`python SCRIPT ARGS` in this process (a script of the repository, named from its root)."""
    import runpy
    import sys

    output = io.StringIO()
    saved = sys.argv
    sys.argv = [str(script), *arguments]
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit:
        if exit.code not in (0, None):
            pytest.fail(
                f"python {script.name} {shlex.join(arguments)}\nexit {exit.code}:\n{output.getvalue()}", pytrace=False
            )
    finally:
        sys.argv = saved


# ---------------------------------------------------------------- the tests


def test_the_docs_are_read():
    items = all_items()
    assert len(DOCS) >= 10 and len(items) >= 100, len(items)
    assert {"shell", "python", "span-shell", "span-python"} <= {item.kind for item in items}


def test_markers_have_a_reason_and_cover_something():
    problems = []
    for path in DOCS:
        _, markers, found = parse_doc(path)
        problems += found
        for marker in markers:
            where = f"{marker.doc}:{marker.line}"
            if not marker.covered:
                problems.append(f"{where}: marker covers no command (misplaced, or its prefix matches none)")
            if marker.target and not (ROOT / marker.target).is_file():
                problems.append(f"{where}: {marker.target} does not exist")
            elif marker.verb == "run by" and Path(marker.doc).name not in (ROOT / marker.target).read_text():
                problems.append(f"{where}: {marker.target} does not mention {Path(marker.doc).name}")
    assert not problems, "\n".join(problems)


def test_excerpts_are_verbatim():
    for item in all_items():
        if item.marker and item.marker.verb == "excerpt of":
            source = [line.strip() for line in (ROOT / item.marker.target).read_text().splitlines()]
            excerpt = [line.strip() for line in item.text.splitlines()]
            starts = [i for i, line in enumerate(source) if line == excerpt[0]]
            assert any(source[i : i + len(excerpt)] == excerpt for i in starts), (
                f"{item.id}: not in {item.marker.target}"
            )


@pytest.mark.parametrize("item", unmarked(), ids=lambda item: item.id)
def test_documented_command_runs(item, fixtures, workdir):
    run_item(item, fixtures, workdir)


@pytest.mark.parametrize("item,argv", marked_byol_commands())
def test_marked_byol_command_is_still_valid(item, argv, workdir):
    """Not run, but parsed (a wrong option or a deprecated name fails), and a `byol train` resolved."""
    from byol.cli import build_parser, config_from_args
    from byol.runtime.errors import UserError

    if "--help" in argv or "-h" in argv:
        return
    output, valid = io.StringIO(), False
    with contextlib.redirect_stderr(output):
        try:
            args = build_parser().parse_args(argv)
            if args.command == "train":
                config_from_args(args)
            valid = True
        except SystemExit:
            pass  # argparse has written why
        except UserError as error:
            print(f"byol: error: {error}", file=output)
    assert valid and "deprecated" not in output.getvalue(), f"{item}\n{output.getvalue()}"


def test_marked_python_compiles():
    for item in all_items():
        if item.marker and item.marker.verb == "not run" and item.kind in ("python", "span-python"):
            compile(item.text, item.id, "exec")


def test_files_the_docs_name_exist():
    # a path in backticks that starts at a top folder of the repository: moved files leave no stale pointers
    named = re.compile(r"`((?:byol|tests|benchmarks|scripts|docs|\.ci)/[\w./-]*\w)`")
    missing = [
        f"{doc.relative_to(ROOT)}:{number}: {path}"
        for doc in DOCS
        for number, line in enumerate(doc.read_text().splitlines(), 1)
        for path in named.findall(line)
        if not (ROOT / path).exists()
    ]
    assert not missing, "\n".join(missing)
