"""Gate warm-up inside the federation (--freeze-gates-at-round, --freeze-gates-when-drift-below, --freeze-gates auto)."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from fedsq_hf import FedSQConfig, FedSQModel, model_card
from fedsq_hf.federated import STRATEGIES, AlignmentRule, DriftRule, FixedRound, GateDecision, build_trainer, run_federated
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

    rule = AlignmentRule(0.4, max_rounds=3)  # the default: pulled apart, warm up to the bound, then the global gates
    assert decide(0.7, 0.1) is None and decide(0.7, 0.5) is None
    assert decide(0.7, 0.1, 0.9) == GateDecision(4, "global", "update alignment 0.100 < 0.4 in round 2: the clients pull "
                                                               "apart; the global model's gates after round 3")
    assert decide(0.7, 0.5, 0.4).round is None


AUTO = dict(freeze_gates="auto", max_warmup_rounds=2)
# any round is below the threshold: the pretrained gates from round 2
PULL_APART = dict(AUTO, gate_alignment_below=0.999, skewed_gates="pretrained")
AGREE = dict(AUTO, gate_alignment_below=-0.999)  # none is: the gates follow the model


def plain_and_auto(backbone, digits_dir, tmp_path, plain_rounds, **auto):
    """A plain FedAvg run of `plain_rounds` rounds and a 3-round FedSQ run with `auto`: (plain history, auto
    history, auto summary)."""
    model, data, fed = tiny_args(backbone, digits_dir, tmp_path / "plain", rounds=plain_rounds)
    model.model = "plain"
    run_federated(model, data, fed)
    summary = run_federated(*tiny_args(backbone, digits_dir, tmp_path / "auto", rounds=3, **auto))
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
    plain, auto, summary = plain_and_auto(backbone_dir("resnet10t"), digits_dir, tmp_path, 3, **AGREE)
    for key in ("clients", "train_loss", "eval_loss", "update_alignment"):  # FedAvg throughout, exactly
        assert [h[key] for h in auto] == [h[key] for h in plain], key
    assert [h["gates"] for h in auto] == ["own"] * 3 and not any("gates_frozen" in h for h in auto)
    warmup = summary["gate_warmup"]
    assert (warmup["gates"], warmup["frozen_at_round"], warmup["by_round"]) == \
        ("own", None, {h["round"]: h["update_alignment"] for h in plain})
    assert warmup["decided"] == "update alignment >= -0.999 in rounds 1-2: the clients agree; the gates follow the model"
    saved = FedSQModel.from_pretrained(tmp_path / "auto" / "final")  # a plain model, as it trained
    assert not saved.config.fixed_gating and not (tmp_path / "auto" / "final" / "structural.safetensors").exists()
    card = model_card(saved.config, summary=summary, history=auto).content
    assert "the clients agree; the gates follow the model, never fixed" in card


@pytest.mark.parametrize("rule,stop", [("drift", 1), ("drift", 3), ("auto", 1)],
                         ids=["drift-in-warm-up", "drift-after-freeze", "auto-in-warm-up"])
def test_resume_during_and_after_the_warm_up_is_exact(rule, stop, backbone_dir, digits_dir, tmp_path):
    """Both rules end the warm-up at its bound here (2 rounds) and fix the global model's gates: auto because the
    clients pulled apart (any alignment is below 0.999). After the freeze both resume the same way (the copy
    from the checkpoint), so auto is resumed inside the warm-up only, where it decides from the history."""
    backbone = backbone_dir("resnet10t")
    settings = dict(rounds=4, strategy="fedprox", mu=0.1, gate_drift_samples=8, max_warmup_rounds=2,
                    # drift from the starting model: a resumed run measures from it too
                    **(dict(freeze_gates_when_drift_below=1e-9) if rule == "drift" else
                       dict(freeze_gates="auto", gate_alignment_below=0.999)))
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "straight", **settings))
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", **settings), callbacks=[StopAfter(stop)])
    summary = run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", resume=True, **settings))
    runs = assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert [h["gates"] for h in runs] == ["own", "own", "fixed", "fixed"]  # the bound: 2 warm-up rounds
    assert all(0 < h["gate_drift"] < 1 for h in runs)
    a, b = (load_file(tmp_path / run / "final" / "structural.safetensors") for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["gate_warmup"]["gates"] == "global" and summary["gate_warmup"]["frozen_at_round"] == 3
    if rule == "auto":
        assert summary["gate_warmup"]["decided"].endswith("the clients pull apart; the global model's gates after round 2")
        assert [(h.get("gate_decision") or {}).get("round") for h in runs] == [None, 3, None, None]


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
    extra = dict(rounds=3, freeze_gates_when_drift_below=0.999, max_warmup_rounds=2, calibration_samples=40,
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
    assert config["calibrated"] and config["gates_frozen_at_round"] == 3  # round 1 never decides; the bound is 2


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
