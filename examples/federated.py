"""Federated fine-tuning with FedSQ or a plain baseline, on 1 or N processes.

    python examples/federated.py                     # offline default: EfficientNet-Lite0 (ImageNet, from PyPI)
                                                     # + FedSQ over 10 Dirichlet clients on 2,000 MNIST digits
    accelerate launch examples/federated.py --model fedsq --strategy fedavg --partition dirichlet --alpha 0.1
    python examples/federated.py --backbone timm/resnet18.a1_in1k --dataset uoft-cs/cifar10 --image-column img

`python examples/federated.py --help` lists every argument. The same command is installed as
`fedsq-federated`.
"""

import sys

from fedsq_hf_cli import federated

if __name__ == "__main__":
    sys.exit(federated())
