#!/usr/bin/env bash
# The test command: set up if needed, then the default test suite (slow tests: add `-m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The linter first: it takes a second, and a style error should not wait for the whole suite.
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/python -m pytest "$@"
