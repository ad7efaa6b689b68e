"""Flower deployment cost: the same small workload on the simulator and on a loopback deployment (a
SuperLink and one SuperNode per client on 127.0.0.1, every fit in a fresh ClientApp process).

    python benchmarks/flower.py                 # resnet10t (random weights), 240 digits at 32 px, 2 clients
    python benchmarks/flower.py --rounds 5

Per round (medians over rounds 2..R; round 1 also warms caches): wall time in each runtime, and on the
deployment the part that is not local training: a fit's process start, imports, data and model build
(`site_time - fit_time` of the slowest site) and the rest (the server's send/receive and aggregation).
Bytes per round: the global model sent down plus the updates sent up, as the server counts them, and
the SuperLink's own count (`flwr ls`: every message both ways, the query round included) over rounds.
Both runtimes end with the same global weights (checked here too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import conftest  # noqa: E402,F401  (offline, a private cache, tiny backbones)
import torch  # noqa: E402
from conftest import save_backbone  # noqa: E402
from flower_helpers import Deployment, run_config, write_app  # noqa: E402
from report import write_json  # noqa: E402
from test_flower import history, simulate  # noqa: E402

from fedsq_hf.serialization import load_weights  # noqa: E402


def digits(folder: str) -> str:
    import numpy as np
    from datasets import ClassLabel, Dataset, Image
    from sklearn.datasets import load_digits

    data = load_digits()
    ds = Dataset.from_dict({"img": [(i * 15).astype(np.uint8) for i in data.images], "label": data.target})
    ds = ds.cast_column("img", Image()).cast_column("label", ClassLabel(names=[str(i) for i in range(10)]))
    split = ds.train_test_split(test_size=0.1, seed=0)
    os.makedirs(folder)
    split["train"].to_parquet(os.path.join(folder, "train.parquet"))
    split["test"].to_parquet(os.path.join(folder, "test.parquet"))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "flower"))
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="fedsq-flower-bench-")
    backbone, dataset = save_backbone(os.path.join(tmp, "backbone"), "resnet10t"), digits(os.path.join(tmp, "digits"))

    start = time.perf_counter()
    simulate(backbone, dataset, os.path.join(tmp, "sim"), rounds=args.rounds)
    sim_total = time.perf_counter() - start
    nodes = [{"partition-id": i, "num-partitions": 2, "state-dir": os.path.join(tmp, f"site{i}")} for i in range(2)]
    deployment = Deployment(os.path.join(tmp, "deployment"), nodes)
    try:
        app = write_app(os.path.join(tmp, "app"), run_config(backbone, dataset, os.path.join(tmp, "flower"),
                                                              rounds=args.rounds))
        start = time.perf_counter()
        _, status = deployment.run(app)
        flower_total = time.perf_counter() - start
        run = deployment.last_run()
    finally:
        deployment.stop()
    assert status == "finished:completed", run
    a = load_weights(os.path.join(tmp, "flower", "final", "model.safetensors"))
    b = load_weights(os.path.join(tmp, "sim", "final", "model.safetensors"))
    same = all(torch.equal(a[k], b[k]) for k in a if not k.endswith("num_batches_tracked"))

    sim, flower = history(os.path.join(tmp, "sim")), history(os.path.join(tmp, "flower"))
    later = slice(1, None)
    median = lambda rows, f: statistics.median(f(r) for r in rows[later])  # noqa: E731
    result = {
        "rounds": args.rounds, "clients": 2, "same_weights": same,
        "simulator_round_s": median(sim, lambda r: r["wall_time"]),
        "flower_round_s": median(flower, lambda r: r["wall_time"]),
        "flower_local_training_s": median(flower, lambda r: r["fit_time"]),
        "flower_site_overhead_s": median(flower, lambda r: r["site_time"] - r["fit_time"]),
        "flower_server_and_transfer_s": median(flower, lambda r: r["train_time"] - r["site_time"]),
        "bytes_per_round_server_count": median(flower, lambda r: r["bytes_sent"] + r["bytes_aggregated"]),
        "bytes_per_round_superlink_count": run["network-traffic"]["total-bytes"] / args.rounds,
        "simulator_total_s": sim_total, "flower_total_s": flower_total,
    }
    result["flower_over_simulator_round"] = result["flower_round_s"] / result["simulator_round_s"]
    for key, value in result.items():
        print(f"{key:34s} {value:.3f}" if isinstance(value, float) else f"{key:34s} {value}")
    print("results:", write_json(args.output, result))


if __name__ == "__main__":
    main()
