"""Flower deployment cost: the same small workload on the simulator and on a loopback deployment (a
SuperLink and one SuperNode per client on 127.0.0.1, every fit in a fresh ClientApp process).

    python benchmarks/flower.py                 # resnet10t (random weights), 240 digits at 32 px, 2 clients
    python benchmarks/flower.py --rounds 5
    python benchmarks/flower.py --gate-cache-mb 64    # FedSQ's gate cache, kept on each site's disk

Per round (medians over rounds 2..R; round 1 also warms caches): wall time in each runtime, and on the
deployment the part that is not local training, at the slowest site: its process start and imports
(`site_time - setup_time - fit_time`), its data, model and trainer build (`setup_time`), and the rest
(the server's send/receive, aggregation and evaluation).
Bytes per round: the global model sent down plus the updates sent up, as the server counts them, and
the SuperLink's own count (`flwr ls`: every message both ways, the query round included) over rounds.
Both runtimes end with the same global weights (checked here too), on one thread per site and one
for the simulator: two sites' 2-thread OpenMP pools on 2 cores spin against each other (local training
then takes 20x as long).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
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
    parser.add_argument("--gate-cache-mb", type=int, default=0, help="FedSQ's gate cache at the sites (kept on disk)")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "flower"))
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="fedsq-flower-bench-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    backbone, dataset = save_backbone(os.path.join(tmp, "backbone"), "resnet10t"), digits(os.path.join(tmp, "digits"))

    start = time.perf_counter()
    workload = dict(rounds=args.rounds, gate_cache_mb=args.gate_cache_mb)
    simulate(backbone, dataset, os.path.join(tmp, "sim"), threads=1, **workload)  # as each site: the same weights
    sim_total = time.perf_counter() - start
    nodes = [{"partition-id": i, "num-partitions": 2, "state-dir": os.path.join(tmp, f"site{i}")} for i in range(2)]
    deployment = Deployment(os.path.join(tmp, "deployment"), nodes)
    try:
        app = write_app(os.path.join(tmp, "app"), run_config(backbone, dataset, os.path.join(tmp, "flower"), **workload))
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
    for record in flower:  # the slowest site's times
        record.update(max(record["sites"].values(), key=lambda site: site["site_time"]))
    later = slice(1, None)
    median = lambda rows, f: statistics.median(f(r) for r in rows[later])  # noqa: E731
    result = {
        "rounds": args.rounds, "clients": 2, "gate_cache_mb": args.gate_cache_mb, "same_weights": same,
        "simulator_round_s": median(sim, lambda r: r["wall_time"]),
        "flower_round_s": median(flower, lambda r: r["wall_time"]),
        "flower_local_training_s": median(flower, lambda r: r["fit_time"]),
        "flower_site_start_imports_s": median(flower, lambda r: r["site_time"] - r["setup_time"] - r["fit_time"]),
        "flower_site_data_model_build_s": median(flower, lambda r: r["setup_time"]),
        "flower_server_and_transfer_s": median(flower, lambda r: r["train_time"] - r["site_time"]),
        "bytes_per_round_server_count": median(flower, lambda r: r["bytes_sent"] + r["bytes_aggregated"]),
        "bytes_per_round_superlink_count": run["network-traffic"]["total-bytes"] / args.rounds,
        "simulator_total_s": sim_total, "flower_total_s": flower_total,
    }
    result["flower_over_simulator_round"] = result["flower_round_s"] / result["simulator_round_s"]
    for key, value in result.items():
        print(f"{key:34s} {value:.3f}" if isinstance(value, float) else f"{key:34s} {value}")
    name = f"results-gate-cache-{args.gate_cache_mb}mb.json" if args.gate_cache_mb else "results.json"
    print("results:", write_json(args.output, result, name))


if __name__ == "__main__":
    main()
