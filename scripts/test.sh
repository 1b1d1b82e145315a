#!/usr/bin/env bash
# The whole default check: lint, types, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
echo "== ruff";   ruff check .
echo "== mypy";   mypy
echo "== pytest"; pytest -q "$@"
