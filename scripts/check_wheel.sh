#!/usr/bin/env bash
# Build the wheel and check it the way a user gets it: installed without -e into a folder of its own (run with
# the test venv's interpreter, so torch is not installed twice), then, from outside the repo, it must import
# that copy and every public module, answer --help on every command line, and run a 1-round tiny federation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="$PWD/.venv/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# built from a copy of the files git keeps (or would keep), so that no build/ left in this checkout ships
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null \
  | tar -xf - -C "$WORK/src"
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
"$PY" -m pip install --quiet --no-deps --target "$WORK/site" "$WORK"/dist/fedsq_hf-*.whl
cd "$WORK"
export PYTHONPATH="$WORK/site" HF_HUB_OFFLINE=1
"$PY" - "$WORK/site" <<'PY'
import importlib, pkgutil, sys
import fedsq_hf
assert fedsq_hf.__file__.startswith(sys.argv[1]), f"imported {fedsq_hf.__file__}, not the installed wheel"
modules = [m.name for m in pkgutil.walk_packages(fedsq_hf.__path__, "fedsq_hf.")]
for name in modules:
    importlib.import_module(name)
assert "fedsq_hf.federated.server.strategies.fedavg" in modules and "fedsq_hf.model_cards" in modules
from fedsq_hf.hub import CARD_TEMPLATE
assert CARD_TEMPLATE.read_text().startswith("---"), "the model card template is missing from the wheel"
print(f"wheel: {len(modules)} modules import from {fedsq_hf.__file__}")
PY
for command in fedsq-federated fedsq-gate-drift fedsq-convert-efficientnet-lite0; do
  "$WORK/site/bin/$command" --help > /dev/null
done
"$PY" - <<'PY'
import numpy as np, timm, torch
from datasets import ClassLabel, Dataset, Image
from sklearn.datasets import load_digits
torch.manual_seed(0)
timm.models.save_for_hf(timm.create_model("resnet10t", pretrained=False), "backbone", safe_serialization=True)
digits = load_digits()
ds = Dataset.from_dict({"img": [(i * 15).astype(np.uint8) for i in digits.images], "label": digits.target})
ds = ds.cast_column("img", Image()).cast_column("label", ClassLabel(names=[str(i) for i in range(10)]))
import os
os.makedirs("digits")
ds.to_parquet("digits/train.parquet")
PY
"$WORK/site/bin/fedsq-federated" --backbone backbone --dataset digits --image_column img --max_train_samples 80 \
  --max_eval_samples 20 --image_size 32 --num_clients 2 --rounds 1 --batch_size 16 --min_partition_size 5 \
  --disable_tqdm --output_dir run > run.log 2>&1 || { cat run.log; exit 1; }
"$PY" -c "from fedsq_hf import FedSQModel; FedSQModel.from_pretrained('run/final')"
echo "wheel: installed without -e, commands answer --help, a 1-round federation ran from $WORK"
