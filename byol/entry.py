"""The `byol` command's front door: `--version` and the top-level `--help` answer without importing torch
(3 s on a laptop CPU); everything else goes to cli.py.

HELP is the text `cli.build_parser()` prints at 80 columns, kept here as text; tests/test_entry.py fails
when the two differ.
"""

from __future__ import annotations

import sys

from byol import __version__

HELP = """\
usage: byol [-h] [--version] COMMAND ...

BYOL self-supervised pre-training (and the methods it is compared with),
evaluation and export.

positional arguments:
  COMMAND
    train     pre-train an encoder (BYOL, or another --method)
    eval      kNN, linear probe and semi-supervised fine-tune of an encoder
    embed     feature matrix of a folder of images
    bench     time full training steps; images/s, FLOP/s, utilization, peers
    ablate    the paper's ablations, or the methods of its comparison table,
              side by side
    export    write the trained encoder for byol, torchvision, timm or ONNX

options:
  -h, --help  show this help message and exit
  --version   show program's version number and exit

`byol COMMAND --help` lists a command's options.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:
        print(f"byol {__version__}")
        return 0
    if argv in (["--help"], ["-h"]):
        print(HELP, end="")
        return 0
    from byol.cli import main as run_command  # torch and the rest are imported only for real work

    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
