#!/usr/bin/env bash
# Set up (if needed), then run the default pipeline on the embedded tiny model. Extra arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lightning-align run "$@"
