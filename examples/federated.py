"""Federated fine-tuning with FedSQ or a plain baseline, on 1 or N processes.

    python examples/federated.py                     # offline default: EfficientNet-Lite0 (ImageNet, from PyPI)
                                                     # + FedSQ over 10 Dirichlet clients on 2,000 MNIST digits
    accelerate launch examples/federated.py --model fedsq --strategy fedavg --partition dirichlet --alpha 0.1
    python examples/federated.py --backbone timm/resnet18.a1_in1k --dataset uoft-cs/cifar10 --image-column img

`python examples/federated.py --help` lists every argument.
"""

import logging
import os
import sys

from fedsq_hf import FedSQError
from fedsq_hf.federated import parse_arguments, run_federated, validate_arguments


def main() -> int:
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fedsq_hf").setLevel(logging.INFO)
    model_args, data_args, fed_args = parse_arguments()
    try:
        validate_arguments(model_args, data_args, fed_args)
        summary = run_federated(model_args, data_args, fed_args)
    except FedSQError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = fed_args.output_dir
    best = f"{summary['best_metric']:.4f}" if summary["best_metric"] is not None else "n/a"
    models = ", ".join(f"{out}/{name}/" for name in ("best", "final") if os.path.isdir(os.path.join(out, name)))
    print(
        f"best {summary['metric_for_best_model']} {best} at round {summary['best_round']} of {summary['rounds']}\n"
        f"results: {out}/summary.json, {out}/history.jsonl\n"
        f"plots:   {out}/metrics.png, {out}/partition.png\n"
        f"models:  {models or 'none written'} (FedSQModel.from_pretrained)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
