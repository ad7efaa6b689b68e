"""Server strategies: their formulas, parameters checked once and refused where not taken, what they send
clients, robust aggregators on 1 and 2 processes, and a user's own by name."""

import sys
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from fedsq_hf import FedSQError
from fedsq_hf.federated import (
    STRATEGIES, FedAdam, FedAvg, FedAvgM, FederatedArguments, FedMedian, FedProx, FedTrimmedAvg, FlatUpdate, ServerOptimizer,
    Strategy,
    build_trainer, make_strategy, register_strategy, run_federated,
)
from helpers import TORCHRUN, cli_args, run_example, tiny_args


def test_fedavg_of_identical_updates_is_that_update():
    update = torch.randn(50)
    summed = sum(w * update for w in (3.0, 5.0, 2.0))
    torch.testing.assert_close(FedAvg().aggregate(summed.clone(), 10.0), update)
    state = torch.zeros(50)
    FedAvg().server_update(state, update)
    torch.testing.assert_close(state, update)


def test_server_optimizers_follow_their_formulas():
    update, state = torch.full((4,), 0.5), torch.zeros(4)
    m = FedAvgM(server_lr=1.0, server_momentum=0.5)
    m.server_update(state, update), m.server_update(state, update)
    torch.testing.assert_close(state, torch.full((4,), 0.5 + 0.75))
    adam, state = FedAdam(server_lr=0.1, tau=1e-3), torch.zeros(4)
    adam.server_update(state, update)
    expected = 0.1 * (0.1 * 0.5) / ((0.01 * 0.25) ** 0.5 + 1e-3)
    torch.testing.assert_close(state, torch.full((4,), expected))
    restored = FedAdam()
    restored.load_state_dict(adam.state_dict())
    assert torch.equal(restored.state["m"], adam.state["m"])


def test_fedavg_is_a_strategy_of_its_own_and_fedprox_configures_its_clients():
    assert not issubclass(FedMedian, FedAvg) and issubclass(FedProx, FedAvg)
    with pytest.raises(NotImplementedError, match="implements neither aggregate"):
        FedMedian().aggregate(torch.ones(3), 1.0)  # the base class is no FedAvg
    assert FedAvg().configure_fit(1) == {} and FedMedian().configure_fit(3) == {}
    assert FedProx(mu=0.2).configure_fit(1) == {"proximal_mu": 0.2}  # the client applies the proximal term


def test_parameters_are_checked_once_and_described_from_the_dataclass():
    assert FedAdam().describe() == {"name": "fedadam", "server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 0.001}
    assert FedTrimmedAvg(beta=0.3).describe() == {"name": "fedtrimmedavg", "beta": 0.3}
    assert FedAvg().describe() == {"name": "fedavg"}
    for bad, match in ((lambda: FedProx(mu=-1.0), "--mu must be >= 0"),
                       (lambda: FedAdam(tau=0.0), "FedAdam needs 0 <= beta1, beta2 < 1 and tau > 0"),
                       (lambda: FedAdam(beta2=1.0), "FedAdam needs 0 <= beta1, beta2 < 1 and tau > 0"),
                       (lambda: FedAvgM(server_momentum=1.0), r"--server-momentum must be in \[0, 1\)"),
                       (lambda: FedAdam(server_lr=0.0), "--server-lr must be > 0")):
        with pytest.raises(FedSQError, match=match):
            bad()


@pytest.mark.parametrize("strategy, given, takes", [
    ("fedavg", {"mu": 0.5}, "no parameters"),
    ("fedavg", {"server_lr": 0.5}, "no parameters"),
    ("fedmedian", {"trim_beta": 0.3}, "no parameters"),
    ("fedprox", {"server_momentum": 0.5}, "--mu"),
    ("fedadam", {"mu": 0.1, "trim_beta": 0.1}, "--server-lr"),
])
def test_a_flag_the_strategy_does_not_take_is_refused_not_dropped(strategy, given, takes):
    flags = ", ".join("--" + k.replace("_", "-") for k in given)
    with pytest.raises(FedSQError, match=f"--strategy {strategy} does not use {flags} \\(it takes {takes}"):
        FederatedArguments(strategy=strategy, **given)
    params = {"beta" if k == "trim_beta" else k: v for k, v in given.items()}
    with pytest.raises(FedSQError, match=f"--strategy {strategy} does not use {', '.join(params)} \\(it takes"):
        make_strategy(strategy, **params)  # from Python: the parameters' own names


def test_server_learning_rates_are_each_strategys_own_unless_given():
    assert FederatedArguments(strategy="fedadam").make_strategy().server_lr == 0.01
    assert FederatedArguments(strategy="fedavgm").make_strategy().server_lr == 1.0
    assert FederatedArguments(strategy="fedadam", server_lr=0.1).make_strategy().server_lr == 0.1
    assert FederatedArguments(strategy="fedtrimmedavg", trim_beta=0.3).make_strategy().beta == 0.3
    assert FederatedArguments(strategy="fedprox").make_strategy().mu == 0.01


def test_fedprox_mu_zero_equals_fedavg(backbone_dir, digits_dir, tmp_path):
    states = []
    for strategy in ("fedavg", "fedprox"):
        run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path / strategy, rounds=1,
                                 strategy=strategy, **({"mu": 0.0} if strategy == "fedprox" else {})))
        states.append(load_file(tmp_path / strategy / "final" / "model.safetensors"))
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_robust_aggregators():
    def updates(values):
        return [FlatUpdate(i, torch.tensor(v, dtype=torch.float32), 10 * (i + 1)) for i, v in enumerate(values)]

    odd = updates([[1.0, -5.0], [2.0, 0.0], [100.0, 1.0]])
    assert FedMedian().aggregate_clients(odd).tolist() == [2.0, 0.0]
    even = updates([[1.0], [2.0], [4.0], [100.0]])
    assert FedMedian().aggregate_clients(even).tolist() == [3.0]  # the mean of the middle two, as np.median
    five = updates([[1.0], [2.0], [3.0], [4.0], [1000.0]])
    assert FedTrimmedAvg(beta=0.2).aggregate_clients(five).tolist() == [3.0]  # 1 and 1000 cut
    assert FedTrimmedAvg(beta=0.0).aggregate_clients(five).tolist() == [202.0]
    with pytest.raises(FedSQError, match=r"--trim-beta must be in \[0, 0.5\)"):
        FedTrimmedAvg(beta=0.5)


def test_a_registered_strategy_gets_every_clients_update_by_name(backbone_dir, digits_dir, tmp_path):
    seen = []

    @register_strategy
    class LargestClient(Strategy):
        name = "largest-client"
        needs_client_updates = True

        def aggregate_clients(self, updates):
            seen.append([(u.client, u.num_samples) for u in updates])
            return max(updates, key=lambda u: u.num_samples).update

    try:
        model, data, fed = tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1, strategy="largest-client")
        trainer = build_trainer(model, data, fed)
        trainer.train()
        clients = trainer.state.history[0]["clients"]
        assert seen == [[(c, len(trainer.partitions[c])) for c in clients]]
    finally:
        STRATEGIES.pop("largest-client")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedmedian"])  # FedTrimmedAvg: test_simulation's --freeze-gates auto run
def test_robust_strategies_give_the_same_weights_on_1_and_2_processes(strategy, backbone_dir, digits_dir, tmp_path):
    backbone = backbone_dir("resnet10t")
    extra = dict(rounds=1, strategy=strategy, clients_per_round=3)
    for name, launcher in (("one", (sys.executable,)), ("two", TORCHRUN)):
        result = run_example(cli_args(backbone, digits_dir, tmp_path / name, **extra), launcher=launcher)
        assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


def test_a_strategy_that_aggregates_nothing_is_refused_and_a_server_optimizer_needs_only_its_update():
    class Nothing(Strategy):
        name = "nothing"

    with pytest.raises(FedSQError, match="'nothing' aggregates nothing: implement aggregate"):
        register_strategy(Nothing)

    class Unnamed(FedAvg):  # would replace FedAvg under its inherited name
        pass

    with pytest.raises(FedSQError, match="a `name` of its own"):
        register_strategy(Unnamed)

    @dataclass
    class HalfStep(ServerOptimizer):
        name = "halfstep"

        def server_update(self, global_state, update):
            global_state.add_(update, alpha=0.5 * self.server_lr)

    try:
        register_strategy(HalfStep)
        strategy, state = make_strategy("halfstep", server_lr=2.0), torch.zeros(2)
        strategy.server_update(state, strategy.aggregate(torch.tensor([3.0, 6.0]), 3.0))  # FedAvg's mean
        assert state.tolist() == [1.0, 2.0]
    finally:
        STRATEGIES.pop("halfstep")
