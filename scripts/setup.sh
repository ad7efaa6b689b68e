#!/usr/bin/env bash
# Create .venv (if missing) and install fedsq-hf with its dev and flower-simulation extras into it. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import fedsq_hf, pytest, timm, accelerate, datasets, flwr" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev,flower-simulation]"
  touch .venv/.installed
fi
