#!/usr/bin/env bash
# Install what is missing, then run the offline default federated example (5 of its 10 clients per round;
# any argument given here overrides these).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/federated.py --clients_per_round 5 "$@"
