#!/usr/bin/env bash
# Create .venv (once) and install lightning_align with its test tools and the benchmark peers (TRL: the test suite
# runs the quick peer comparison). Safe to run again: installed pieces are kept.
# torch is pinned and installed first so that pip takes the CPU build instead of pulling CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
