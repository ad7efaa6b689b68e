"""Gate warm-up inside the federation (--freeze-gates-at-round, --freeze-gates-when-drift-below, --freeze-gates auto)."""

import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedsq_hf import CheckpointError, FedSQConfig, FedSQModel, model_card
from fedsq_hf.federated import (STRATEGIES, AlignmentRule, DriftRule, FederatedCallback, FixedRound, GateDecision,
                                build_trainer, run_federated)
from helpers import StopAfter, assert_same_run, cli_args, run_example, tiny_args


def history(folder):
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


def test_warmup_rounds_train_as_a_plain_model_then_gates_freeze_from_the_global_model(backbone_dir, digits_dir, tmp_path):
    backbone = backbone_dir("resnet10t")
    model, data, fed = tiny_args(backbone, digits_dir, tmp_path / "plain", rounds=1)
    model.model = "plain"
    run_federated(model, data, fed)
    trainer = build_trainer(*tiny_args(backbone, digits_dir, tmp_path / "warm", rounds=3, freeze_gates_at_round=2))
    summary = trainer.train()

    plain, warm = history(tmp_path / "plain"), history(tmp_path / "warm")
    for key in ("clients", "train_loss", "eval_loss", "eval_accuracy"):  # round 1 is plain FedAvg, exactly
        assert warm[0][key] == plain[0][key], key
    assert [h["gates"] for h in warm] == ["own", "fixed", "fixed"]
    assert [h.get("gates_frozen") for h in warm] == [None, True, False]
    assert 0 < warm[0]["gate_step_drift"] < 1 and "gate_step_drift" not in warm[1]
    assert warm[0]["gate_probe_loss"] > 0 and "gate_probe_loss" not in warm[1]

    # the structural copy is the global model after round 1 (its backbone, without the head)
    structural = load_file(tmp_path / "warm" / "final" / "structural.safetensors")
    after_round_1 = load_file(tmp_path / "plain" / "final" / "model.safetensors")
    assert structural and all(torch.equal(v, after_round_1[f"dual_copy.quantitative.{k}"]) for k, v in structural.items())

    # each client receives the structural copy once: the round's clients at the freeze, then newcomers only
    size = sum(t.numel() * t.element_size() for t in trainer.model.structural.state_dict().values())
    newcomers = len(set(warm[2]["clients"]) - set(warm[1]["clients"]))
    assert [h.get("bytes_structural") for h in warm] == [None, 2 * size, newcomers * size]
    assert summary["gate_warmup"] == {"rule": "fixed round 2", "decided": "--freeze-gates-at-round 2", "gates": "global",
                                      "frozen_at_round": 2, "statistic": "gate_step_drift",
                                      "by_round": {1: warm[0]["gate_step_drift"]}, "probe_samples": 60,
                                      "step_drift_at_freeze": warm[0]["gate_step_drift"],
                                      "bytes_structural": (2 + newcomers) * size}
    saved = json.loads((tmp_path / "warm" / "summary.json").read_text())["gate_warmup"]
    assert saved == {**summary["gate_warmup"], "by_round": {"1": warm[0]["gate_step_drift"]}}

    loaded = FedSQModel.from_pretrained(tmp_path / "warm" / "final")
    assert loaded.config.gates_frozen_at_round == 2 and loaded.config.calibrated and loaded.dual_copy.gating
    for k, v in loaded.structural.state_dict().items():
        assert torch.equal(v, structural[k]), k
    card = model_card(loaded.config, summary=summary, history=warm).content
    assert "re-frozen from the global model at\n  the start of round 2, after a federated gate warm-up" in card
    assert "| gate warm-up | rounds 1-1 without fixed gates, then gates frozen from the global model at round 2" in card


def test_drift_rule_freezes_after_the_first_settled_round_or_the_bound():
    rule = DriftRule(0.05, max_rounds=3)

    def freeze(*ds, losses=(2.0, 1.5, 1.0)):
        decision = rule.decide([{"round": r, "gate_step_drift": d, "gate_probe_loss": l}
                                for r, (d, l) in enumerate(zip(ds, losses), 1)])
        return None if decision is None else decision.round

    assert freeze() is None and freeze(0.01) is None  # round 1 alone never decides
    assert freeze(0.2, 0.04) == 3
    assert freeze(0.01, 0.03) is None  # below the threshold, but still rising
    assert freeze(0.01, 0.03, 0.02) == 4
    assert freeze(0.2, 0.1, 0.09) == 4  # the bound: at most 3 warm-up rounds
    assert "--max-warmup-rounds 3" in rule.decide([{"round": r, "gate_step_drift": 0.2, "gate_probe_loss": 1.0}
                                                   for r in (1, 2, 3)]).reason
    # a model whose probe loss rose has stopped learning (e.g. collapsed to one class): its still gates are not settled
    assert freeze(0.2, 0.04, losses=(2.3, 3.1)) is None
    assert freeze(0.2, 0.04, 0.03, losses=(2.3, 3.1, 2.9)) == 4
    assert FixedRound(4).decide([]) == GateDecision(4, "global", "--freeze-gates-at-round 4")


def test_alignment_rule_keeps_the_pretrained_gates_when_clients_pull_apart_and_none_when_they_agree():
    rule = AlignmentRule(0.4, max_rounds=3, skewed="pretrained")

    def decide(*alignments):
        return rule.decide([{"round": r, "update_alignment": a} for r, a in enumerate(alignments, 1)])

    assert decide() is None and decide(0.7) is None and decide(0.7, 0.5) is None  # aligned so far: watching
    pulled = decide(0.7, 0.1)
    assert (pulled.round, pulled.source) == (3, "pretrained") and "0.100 < 0.4 in round 2" in pulled.reason
    assert decide(0.39).round == 2  # the first round below decides at once
    agreed = decide(0.7, 0.5, 0.4)
    assert (agreed.round, agreed.source) == (None, "global") and "rounds 1-3" in agreed.reason  # never fixed
    assert decide(0.7, 0.5, 0.4, 0.0) == agreed  # rounds after the window do not count
    assert decide(None, 0.6, 0.9).round is None  # a round with one usable update gives no alignment
    assert decide(None, None, None) == GateDecision(4, "pretrained", "no two client updates to align in rounds 1-3; "
                                                                       "the pretrained gates")

    # the default: pulled apart, warm up to the bound + 1 (round 3's model is scored in round 4), then the gates
    # of the warm-up model its clients scored best (a model's score is in the next round's record)
    rule = AlignmentRule(0.4, max_rounds=3)

    def scored(alignments, scores):
        return rule.decide([{"round": r, "update_alignment": a,
                             **({} if s is None else {"client_balanced_accuracy": s})}
                            for r, (a, s) in enumerate(zip(alignments, scores), 1)])

    assert rule.needs_scores and not AlignmentRule(0.4, 3, "pretrained").needs_scores
    assert decide(0.7, 0.1) is None and decide(0.7, 0.5) is None and decide(0.7, 0.1, 0.9) is None
    assert decide(0.7, 0.5, 0.4).round is None  # agreed: decided at the bound, no scores needed
    best = scored((0.7, 0.1, 0.9, 0.0), (None, 0.46, 0.34, 0.40))
    assert best == GateDecision(5, "global", "update alignment 0.100 < 0.4 in round 2: the clients pull apart; the "
                                             "gates of round 1's global model, scored best by its clients (0.460) of "
                                             "rounds 1-3", model_round=1)
    assert best.to_dict()["model_round"] == 1 and "model_round" not in agreed.to_dict()
    assert scored((0.7, 0.1, 0.9, 0.0), (None, 0.3, 0.5, 0.5)).model_round == 2  # a tie: the first
    assert scored((0.7, 0.1, 0.9, 0.0, 0.0), (None, 0.1, 0.2, 0.3, 0.9)).model_round == 3  # round 5 scores no candidate
    assert "no client scored" in scored((0.7, 0.1, 0.9, 0.0), (None,) * 4).reason


def test_auto_skewed_gates_pick_the_pretrained_ones_where_the_clients_hold_few_classes_each():
    rule = AlignmentRule(0.4, max_rounds=3, share_below=0.44)  # --skewed-gates auto, the default

    def decide(*rounds):  # (alignment, label share, score of the previous round's model)
        return rule.decide([{"round": r, "update_alignment": a, "client_label_share": share,
                             **({} if s is None else {"client_balanced_accuracy": s})}
                            for r, (a, share, s) in enumerate(rounds, 1)])

    assert rule.needs_scores and rule.needs_labels and not AlignmentRule(0.4, 3, "global").needs_labels
    few = decide((0.1, 0.3, None))  # pulled apart in round 1, few classes each: the pretrained gates at once
    assert few == GateDecision(2, "pretrained", "update alignment 0.100 < 0.4 in round 1: the clients pull apart; "
                                                "client label share 0.300 < 0.44; the pretrained gates")
    many = [(0.1, 0.6, None), (0.9, 0.6, 0.5), (0.9, 0.6, 0.7), (0.9, None, 0.2)]  # many classes each: "global"
    assert decide(*many[:3]) is None and decide(*many).model_round == 2
    assert "client label share 0.600 >= 0.44; the gates of round 2's global model" in decide(*many).reason
    # the mean share of the rounds up to the one that pulled apart decides, not the rounds after it
    assert decide((0.7, 0.2, None), (0.1, 0.6, 0.5)) == GateDecision(
        3, "pretrained", "update alignment 0.100 < 0.4 in round 2: the clients pull apart; client label share 0.400 "
                         "< 0.44; the pretrained gates")
    assert decide((0.7, 0.3, None), (0.1, 0.7, 0.5)) is None  # 0.5: "global", scored up to round 4
    assert decide((0.1, 0.6, None), (0.9, 0.1, 0.5), (0.9, 0.1, 0.5)) is None
    assert decide((0.1, None, None), (0.9, None, 0.5), (0.9, None, 0.5), (0.9, None, 0.5)).source == "global"  # no share

    # the clients send their share in the window's rounds until one pulls apart, and only for "auto"
    history = [{"round": 1, "update_alignment": 0.7}]
    assert rule.asks_labels([]) and rule.asks_labels(history)
    assert not rule.asks_labels(history + [{"round": 2, "update_alignment": 0.1}])
    assert not rule.asks_labels(history * 3) and not AlignmentRule(0.4, 3, "global").asks_labels([])


AUTO = dict(freeze_gates="auto", max_warmup_rounds=2)
# any round is below the threshold: the pretrained gates from round 2
PULL_APART = dict(AUTO, gate_alignment_below=0.999, skewed_gates="pretrained")
AGREE = dict(AUTO, gate_alignment_below=-0.999)  # none is: the gates follow the model


def plain_and_auto(backbone, digits_dir, tmp_path, plain_rounds, rounds=3, **auto):
    """A plain FedAvg run of `plain_rounds` rounds and a FedSQ run of `rounds` with `auto`: (plain history, auto
    history, auto summary)."""
    model, data, fed = tiny_args(backbone, digits_dir, tmp_path / "plain", rounds=plain_rounds)
    model.model = "plain"
    run_federated(model, data, fed)
    summary = run_federated(*tiny_args(backbone, digits_dir, tmp_path / "auto", rounds=rounds, **auto))
    return history(tmp_path / "plain"), history(tmp_path / "auto"), summary


def test_auto_keeps_the_pretrained_gates_when_the_clients_pull_apart(backbone_dir, digits_dir, tmp_path):
    backbone = backbone_dir("resnet10t")
    plain, auto, summary = plain_and_auto(backbone, digits_dir, tmp_path, 1, **PULL_APART)
    for key in ("clients", "train_loss", "eval_loss", "update_alignment"):  # round 1 is plain FedAvg, exactly
        assert auto[0][key] == plain[0][key], key
    assert [h["gates"] for h in auto] == ["own", "fixed", "fixed"]
    assert [h.get("gates_frozen") for h in auto] == [None, True, False]
    assert [h.get("bytes_structural") for h in auto] == [None, 0, 0]  # every client holds the backbone's copy
    assert not any("gate_step_drift" in h or "gate_probe_loss" in h for h in auto)  # no server data
    alignment = auto[0]["update_alignment"]
    assert -1 <= alignment < 0.999
    assert summary["gate_warmup"] == {
        "rule": "auto: the pretrained gates if the client update alignment falls below 0.999 in rounds 1-2, else none "
                "fixed (no server data)",
        "decided": f"update alignment {alignment:.3f} < 0.999 in round 1: the clients pull apart; the pretrained gates",
        "gates": "pretrained", "frozen_at_round": 2, "statistic": "update_alignment", "by_round": {1: alignment},
        "bytes_structural": 0}

    assert not (tmp_path / "auto" / "final" / "structural.safetensors").exists()
    loaded = FedSQModel.from_pretrained(tmp_path / "auto" / "final")
    assert loaded.config.gates_frozen_at_round == 2 and not loaded.config.calibrated and loaded.dual_copy.gating
    pretrained = FedSQModel(FedSQConfig(backbone=backbone, num_labels=loaded.config.num_labels)).structural
    assert all(torch.equal(v, pretrained.state_dict()[k]) for k, v in loaded.structural.state_dict().items())
    card = model_card(loaded.config, summary=summary, history=auto).content
    assert "| gate warm-up | rounds 1-1 without fixed gates, then the backbone's pretrained gates from round 2 (auto" in card


def test_auto_lets_the_gates_follow_the_model_when_the_clients_agree(backbone_dir, digits_dir, tmp_path):
    plain, auto, summary = plain_and_auto(backbone_dir("resnet10t"), digits_dir, tmp_path, 4, rounds=4, **AGREE)
    for key in ("clients", "train_loss", "eval_loss", "update_alignment"):  # FedAvg throughout, exactly: the
        assert [h[key] for h in auto] == [h[key] for h in plain], key  # clients' scores of round 2 changed nothing
    assert [h["gates"] for h in auto] == ["own"] * 4 and not any("gates_frozen" in h for h in auto)
    assert ["client_balanced_accuracy" in h for h in auto] == [False, True, False, False]  # undecided in round 2 only
    assert 0 <= auto[1]["client_balanced_accuracy"] <= 1
    warmup = summary["gate_warmup"]
    assert (warmup["gates"], warmup["frozen_at_round"], warmup["by_round"], warmup["gates_of_round"]) == \
        ("own", None, {h["round"]: h["update_alignment"] for h in plain}, None)
    assert warmup["client_balanced_accuracy"] == {1: auto[1]["client_balanced_accuracy"]}
    assert warmup["decided"] == "update alignment >= -0.999 in rounds 1-2: the clients agree; the gates follow the model"
    saved = FedSQModel.from_pretrained(tmp_path / "auto" / "final")  # a plain model, as it trained
    assert not saved.config.fixed_gating and not (tmp_path / "auto" / "final" / "structural.safetensors").exists()
    card = model_card(saved.config, summary=summary, history=auto).content
    assert "the clients agree; the gates follow the model, never fixed" in card


@pytest.mark.parametrize("below,picked", [(1.0, "pretrained"), (0.01, "global")])
def test_auto_skewed_gates_train_exactly_as_the_gates_they_pick(below, picked, backbone_dir, digits_dir, tmp_path):
    """--skewed-gates auto reads the label share round 1's clients sent (from their partitions' labels) and then
    trains bit for bit as --skewed-gates <its pick>: the share changes nothing of the training."""
    backbone = backbone_dir("resnet10t")
    settings = dict(rounds=3, freeze_gates="auto", gate_alignment_below=0.999, max_warmup_rounds=1)
    scored = {} if picked == "pretrained" else {"client_eval_samples": 16}
    summary = run_federated(*tiny_args(backbone, digits_dir, tmp_path / "auto", label_share_below=below,
                                       client_eval_samples=16, **settings))
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / picked, skewed_gates=picked, **scored, **settings))
    auto, chosen = history(tmp_path / "auto"), history(tmp_path / picked)
    for key in ("train_loss", "eval_loss", "update_alignment", "gates", "gates_frozen", "client_balanced_accuracy"):
        assert [h.get(key) for h in auto] == [h.get(key) for h in chosen], key
    for name in ("model.safetensors", "structural.safetensors"):
        if (tmp_path / picked / "final" / name).exists() or (tmp_path / "auto" / "final" / name).exists():
            a, b = (load_file(tmp_path / run / "final" / name) for run in ("auto", picked))
            assert all(torch.equal(a[k], b[k]) for k in a), name

    histograms = json.loads((tmp_path / "auto" / "partition.json").read_text())["label_histogram"]
    shares = []
    for client in auto[0]["clients"]:
        p = torch.tensor(histograms[client], dtype=torch.float64)
        p = p[p > 0] / p.sum()
        shares.append(float(torch.exp(-(p * p.log()).sum())) / len(histograms[client]))
    share = auto[0]["client_label_share"]
    assert share == pytest.approx(sum(shares) / len(shares), abs=1e-9) and 0.1 < share < 1
    assert [("client_label_share" in h) for h in auto] == [True, False, False]  # decided by round 1's share
    assert not any("client_label_share" in h for h in chosen)  # the other picks ask for none
    warmup = summary["gate_warmup"]
    assert warmup["client_label_share"] == {1: share} and warmup["gates"] == picked
    sign = "<" if picked == "pretrained" else ">="
    assert f"in round 1: the clients pull apart; client label share {share:.3f} {sign} {below}" in warmup["decided"]
    assert warmup["rule"].startswith(f"auto: the pretrained (client label share < {below}) or the best client-scored")


class GlobalWeights(FederatedCallback):
    """The global model's weights after each round (round -> state dict of the quantitative copy)."""

    def __init__(self):
        self.by_round = {}

    def on_round_end(self, args, state, control, model=None, **kwargs):
        self.by_round[state.round] = {k: v.clone() for k, v in model.dual_copy.quantitative.state_dict().items()}


@pytest.mark.parametrize("rule,stop", [("drift", 1), ("drift", 3), ("auto", 2)],
                         ids=["drift-in-warm-up", "drift-after-freeze", "auto-in-warm-up"])
def test_resume_during_and_after_the_warm_up_is_exact(rule, stop, backbone_dir, digits_dir, tmp_path):
    """Both rules end the warm-up at its bound here (2 rounds) and fix a global model's gates: auto because the
    clients pulled apart (any alignment is below 0.999), after round 3, whose clients scored round 2's model;
    auto is resumed after round 2, whose clients scored round 1's: its weights come back from the checkpoint.
    After the freeze both resume the same way (the copy from the checkpoint)."""
    backbone, weights = backbone_dir("resnet10t"), GlobalWeights()
    settings = dict(rounds=4, strategy="fedprox", mu=0.1, gate_drift_samples=8, max_warmup_rounds=2,
                    # drift from the starting model: a resumed run measures from it too
                    **(dict(freeze_gates_when_drift_below=1e-9) if rule == "drift" else
                       dict(freeze_gates="auto", gate_alignment_below=0.999, client_eval_samples=16)))
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "straight", **settings), callbacks=[weights])
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", **settings), callbacks=[StopAfter(stop)])
    if rule == "auto":  # a checkpoint without the best-scored model's weights cannot resume exactly: refused
        damaged = shutil.copytree(tmp_path / "resumed", tmp_path / "damaged")
        file = damaged / "checkpoints" / "round-00002" / "state.safetensors"
        tensors = load_file(file)
        assert any(k.startswith("gate_warmup.") for k in tensors)
        save_file({k: v for k, v in tensors.items() if not k.startswith("gate_warmup.")}, file)
        with pytest.raises(CheckpointError, match=r"lacks the weights of the gate warm-up's best-scored model \(clients "
                                                  r"scored rounds \[2\]\); it was damaged"):
            run_federated(*tiny_args(backbone, digits_dir, damaged, resume=True, **settings))
    summary = run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", resume=True, **settings))
    runs = assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert all(0 < h["gate_drift"] < 1 for h in runs)
    a, b = (load_file(tmp_path / run / "final" / "structural.safetensors") for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    warmup = summary["gate_warmup"]
    assert warmup["gates"] == "global"
    if rule == "drift":
        assert [h["gates"] for h in runs] == ["own", "own", "fixed", "fixed"] and warmup["frozen_at_round"] == 3
        return
    assert [h["gates"] for h in runs] == ["own", "own", "own", "fixed"] and warmup["frozen_at_round"] == 4
    scores = [h.get("client_balanced_accuracy") for h in runs]
    assert scores[0] is None and scores[3] is None and all(0 <= s <= 1 for s in scores[1:3])
    assert [0 < h.get("client_eval_samples", 0) <= 2 * 16 for h in runs] == [False, True, True, False]
    best = 1 if scores[1] >= scores[2] else 2
    assert warmup["client_balanced_accuracy"] == {1: scores[1], 2: scores[2]} and warmup["gates_of_round"] == best
    assert [(h.get("gate_decision") or {}).get("model_round") for h in runs] == [None, None, best, None]
    assert warmup["decided"].endswith(f"the gates of round {best}'s global model, scored best by its clients "
                                      f"({scores[best]:.3f}) of rounds 1-2")
    assert all(torch.equal(v, weights.by_round[best][k]) for k, v in a.items())  # not the last warm-up model's
    assert any(not torch.equal(v, weights.by_round[3][k]) for k, v in a.items())
    structural = sum(t.numel() * t.element_size() for t in a.values())
    assert [h.get("bytes_structural") for h in runs] == [None, None, None, len(runs[3]["clients"]) * structural]
    checkpoint = load_file(tmp_path / "resumed" / "checkpoints" / "round-00004" / "state.safetensors")
    assert not any(k.startswith("gate_warmup.") for k in checkpoint)  # kept only until the decision
    card = model_card(FedSQModel.from_pretrained(tmp_path / "resumed" / "final").config, summary=summary,
                      history=runs).content
    assert f"| gate warm-up | rounds 1-3 without fixed gates, then gates frozen from the global model of round {best} " \
           "at round 4 (auto: the pretrained (client label share < 0.44) or the best client-scored warm-up model's " \
           "gates" in card
    shares = [h.get("client_label_share") for h in runs]  # asked until the clients pulled apart: round 1 here
    assert warmup["client_label_share"] == {1: shares[0]} and shares[1:] == [None, None, None]
    assert f"client label share {shares[0]:.3f} >= 0.44" in warmup["decided"]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_warms_up_then_freezes(strategy, backbone_dir, digits_dir, tmp_path):
    summary = run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=2, strategy=strategy,
                                       clients_per_round=3, freeze_gates_when_drift_below=0.999, max_warmup_rounds=1))
    assert summary["gate_warmup"]["frozen_at_round"] == 2 and summary["gate_warmup"]["step_drift_at_freeze"] < 0.999
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / "final" / "model.safetensors").values())


@pytest.mark.slow
def test_warm_up_after_calibration_gives_the_same_weights_on_1_and_2_processes(backbone_dir, digits_dir, tmp_path):
    """... with client-level DP (adaptive, clipped at the clients) and DP-SGD on too: their noise is seeded by
    (seed, round), the same on every process."""
    backbone = backbone_dir("resnet10t")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29551")
    extra = dict(rounds=2, freeze_gates_when_drift_below=0.999, max_warmup_rounds=1, calibration_samples=40,
                 gate_probe_samples=32, dp_clip_norm=0.001, dp_noise_multiplier=0.01, dp_clip_quantile=0.5,
                 dp_clipping="client", dp_sgd_noise_multiplier=1.0, local_steps=2)
    for name, launcher in (("one", (sys.executable,)), ("two", torchrun)):
        result = run_example(cli_args(backbone, digits_dir, tmp_path / name, **extra), launcher=launcher)
        assert result.returncode == 0, result.stderr[-3000:]
    for file in ("model.safetensors", "structural.safetensors"):
        a, b = (load_file(tmp_path / name / "final" / file) for name in ("one", "two"))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    one, two = history(tmp_path / "one"), history(tmp_path / "two")
    keys = ("clients", "gates", "dp_epsilon", "dp_clip_norm", "dp_clipped_clients", "dp_sgd_epsilon")
    assert [[h[k] for k in keys] for h in one] == [[h[k] for k in keys] for h in two]
    config = json.loads((tmp_path / "two" / "final" / "config.json").read_text())
    assert config["calibrated"] and config["gates_frozen_at_round"] == 2  # round 1 never decides; the bound is 1


def test_a_model_saved_during_the_warm_up_is_the_plain_model_it_is(backbone_dir, tmp_path):
    model = FedSQModel(FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3)).eval()
    x = torch.randn(2, 3, 32, 32)
    model.dual_copy.disable_gates()
    own = model(x).logits
    model.save_pretrained(tmp_path)
    loaded = FedSQModel.from_pretrained(tmp_path)
    assert not loaded.config.fixed_gating and not (tmp_path / "structural.safetensors").exists()
    torch.testing.assert_close(loaded(x).logits, own)
    model.dual_copy.enable_gates()
    assert model.dual_copy.gating and model.config.fixed_gating
