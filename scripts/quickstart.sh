#!/usr/bin/env bash
# The main job: set up, pre-train on Fashion-MNIST with the cpu-quickstart preset (continues an
# interrupted run), then evaluate the encoder: eval.json, a table and plots in runs/quickstart.
# Extra arguments go to `byol train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/byol train --preset cpu-quickstart --out runs/quickstart --resume "$@"
.venv/bin/byol eval --checkpoint runs/quickstart/checkpoint.pt
