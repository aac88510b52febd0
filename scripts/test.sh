#!/usr/bin/env bash
# Set up (if needed), then run the whole test suite (slow end-to-end runs included; GPU tests skip on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra "$@"
