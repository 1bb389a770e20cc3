#!/usr/bin/env bash
# The main job: set up, pre-train on Fashion-MNIST with the cpu-quickstart preset (resumes if
# interrupted), then evaluate the encoder. Extra arguments go to `byol train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/byol train --preset cpu-quickstart --out runs/quickstart --resume "$@"
