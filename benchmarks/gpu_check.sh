#!/usr/bin/env bash
# byol's GPU check: a thin wrapper around `python3 -m benchmarks.gpu_check`, whose driver
# (benchmarks/gpu_check/run.py) says what it measures, its knobs (BUDGET_S, TRAIN_S, STEPS, RUNS, DRY,
# DEVICE, PROJECT, FMNIST, WHL, PY, OUT, WORK, ...) and what lands in $OUT.
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine, from the checkout's root (the device `run`
#                                         # call needs timeout_s >= BUDGET_S + 70: 580 by default)
#   DRY=1 bash benchmarks/gpu_check.sh    # a dry run of every step on a CPU, at toy sizes
#
# The driver needs only Python's standard library; its steps run under PY (python3, the image's, with torch).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${PY:-python3}" -m benchmarks.gpu_check "$@"
