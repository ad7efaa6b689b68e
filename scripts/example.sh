#!/usr/bin/env bash
# Install what is missing, then run the offline default federated example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/federated.py "$@"
