#!/usr/bin/env bash
# Creates .venv with byol and its test tools, and installs Debian's Fashion-MNIST when it is missing
# and apt is usable. Safe to run again: it only does what is not done yet.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else SUDO="none"; fi
    if [ "$SUDO" != none ]; then
        echo "setup: installing Debian's dataset-fashion-mnist" >&2
        $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
            || echo "setup: could not install dataset-fashion-mnist; byol will look in ~/.cache/byol or try to download" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import byol, pytest, torchvision, hypothesis, timm, onnxscript, onnxruntime" >/dev/null 2>&1 \
    || [ ! -x .venv/bin/ruff ]; then
    echo "setup: installing byol into .venv (torch and torchvision come from pip's cache when present)" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e ".[test]"
fi
