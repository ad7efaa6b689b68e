"""Client-level differential privacy (DP-FedAvg): clipping bounds each client, the noise is N(0, (z C)^2)
and seeded by (seed, round), epsilon is Opacus's RDP accountant's, bad settings are refused, and a DP run
is recorded and resumes exactly. (1 vs 2 processes: tests/test_gate_warmup.py, with calibration and the gate
warm-up; the Flower runtime: tests/test_flower.py.)"""

import json
import statistics

import pytest
import torch
from safetensors.torch import load_file

from fedsq_hf import FedSQError, FedSQModel, model_card
from fedsq_hf.federated import FedAvg, FederatedArguments, FlatUpdate, run_federated
from fedsq_hf.federated.server import ClientLevelDP, FedAdam, PrivacyAccount, dp_epsilon, dp_noise_multiplier
from helpers import StopAfter, assert_same_run, tiny_args


def _updates(*norms, size=1000):
    torch.manual_seed(0)
    directions = [torch.randn(size) for _ in norms]
    return [FlatUpdate(i, d / d.norm() * n, num_samples=10 * (i + 1)) for i, (d, n) in enumerate(zip(directions, norms))]


def _dp(inner=None, clip=1.0, z=0.0, m=3, seed=0, round_=1):
    dp = ClientLevelDP(inner or FedAvg(), clip, z, m, seed)
    dp.begin_round(round_)
    return dp


def test_clipping_bounds_every_clients_contribution():
    dp = _dp(clip=1.0, m=3)
    updates = _updates(0.5, 3.0, 100.0)
    assert [(round(float(dp.clip(u)[0].norm()), 6), dp.clip(u)[1]) for u in updates] == \
        [(0.5, True), (1.0, False), (1.0, False)]
    honest = _dp(clip=1.0, m=3).aggregate_clients(updates[:2])
    dp = _dp(clip=1.0, m=3)
    with_outlier = dp.aggregate_clients(updates)
    assert dp.round_metrics() == {"dp_clipped_clients": 2}
    assert float((with_outlier - honest).norm()) <= 1.0 / 3 + 1e-6  # one client moves the mean by at most C / m
    # equal weights: the 10x and 20x sample counts do not count
    expected = sum(dp.clip(u)[0] for u in updates) / 3
    torch.testing.assert_close(with_outlier, expected)


def test_client_side_clipping_bounds_the_update_and_the_server_enforces_it():
    from fedsq_hf.federated.client.privacy import clip_update

    update = {"a": torch.full((30,), 0.5), "b": torch.full((2, 3), -2.0)}  # norm sqrt(7.5 + 24)
    clipped, within = clip_update(update, 1.0)
    norm = float(torch.cat([t.flatten() for t in clipped.values()]).norm())
    assert within == 0 and norm == pytest.approx(1.0) and torch.allclose(clipped["b"] / clipped["a"][0], update["b"] / 0.5)
    assert clip_update(update, 10.0) == (update, 1)
    # the server's aggregate of client-clipped updates is the server-side clipping's; a client that did not clip
    # (no dp_unclipped) is clipped on arrival and counted clipped
    updates = _updates(0.5, 3.0, 100.0)
    by_clients = []
    for u in updates[:2]:
        tensors, within = clip_update({"x": u.update}, 1.0)
        by_clients.append(FlatUpdate(u.client, tensors["x"], u.num_samples, {"dp_unclipped": within}))
    client_side = ClientLevelDP(FedAvg(), 1.0, 0.5, 3, clipping="client")
    client_side.begin_round(1)
    assert client_side.configure_fit(1) == {"dp_clip_norm": 1.0}
    server_side = _dp(clip=1.0, z=0.5, m=3)
    torch.testing.assert_close(client_side.aggregate_clients([*by_clients, updates[2]]), server_side.aggregate_clients(updates))
    assert client_side.round_metrics() == server_side.round_metrics() == {"dp_clipped_clients": 2}


def test_adaptive_clipping_moves_the_bound_to_the_quantile_of_the_norms():
    from fedsq_hf.federated import AdaptiveClipping

    norms = torch.logspace(-1, 1, 20).tolist()  # 0.1 .. 10, median 1
    dp = ClientLevelDP(FedAvg(), 0.05, 0.0, 20, adaptive=AdaptiveClipping(0.5, lr=0.2, count_stddev=1.0))
    bounds = []
    for round_ in range(1, 81):
        dp.begin_round(round_)
        dp.aggregate_clients(_updates(*norms, size=10))
        bounds.append(dp.round_metrics()["dp_clip_norm"])
    assert bounds[0] == 0.05 < bounds[1] and 0.6 < statistics.median(bounds[40:]) < 1.6  # up to about the median norm
    # the count is a second query: the updates get the larger share of the run's noise multiplier
    clipping = AdaptiveClipping(0.5, count_stddev=2.0)
    assert clipping.update_noise_multiplier(1.0, 40) == pytest.approx((1.0 - 1 / 16) ** -0.5)
    assert ClientLevelDP(FedAvg(), 1.0, 1.0, 40, adaptive=clipping).update_noise_multiplier == pytest.approx(1.0328, abs=1e-4)
    with pytest.raises(FedSQError, match=r"needs a count noise --dp-clipped-count-stddev above 2.*default clients per "
                                         r"round / 20"):
        AdaptiveClipping(0.5).update_noise_multiplier(4.0, 20)
    state = dp.state_dict()
    resumed = ClientLevelDP(FedAvg(), 0.05, 0.0, 20, adaptive=AdaptiveClipping(0.5, lr=0.2, count_stddev=1.0))
    resumed.load_state_dict(state)
    assert resumed.clip_norm == dp.clip_norm and resumed.describe()["dp"]["clip_norm"] == 0.05  # the first bound


def test_os_noise_is_fresh_each_round_and_seeded_noise_is_not():
    zero = [FlatUpdate(0, torch.zeros(1000), 1)]

    def noise(source):
        dp = ClientLevelDP(FedAvg(), 1.0, 1.0, 1, seed=3, noise_source=source)
        dp.begin_round(1)
        return dp.aggregate_clients(zero)

    assert torch.equal(noise("seeded"), noise("seeded")) and not torch.equal(noise("os"), noise("os"))
    args = FederatedArguments(num_clients=4, dp_clip_norm=1.0, dp_noise_multiplier=1.0)
    assert args.make_strategy().noise_source == "seeded" and args.make_strategy(noise_source="os").noise_source == "os"
    assert FederatedArguments(num_clients=4, dp_clip_norm=1.0, dp_noise_multiplier=1.0,
                              dp_noise_source="seeded").make_strategy(noise_source="os").noise_source == "seeded"


def test_the_noise_is_gaussian_with_std_z_times_c_and_seeded_by_seed_and_round():
    zero = [FlatUpdate(0, torch.zeros(1_000_000), 1)]
    noise = _dp(clip=0.5, z=2.0, m=1).aggregate_clients(zero)
    assert float(noise.std()) == pytest.approx(1.0, rel=0.01)  # z C = 1; the estimate's own error is ~0.07%
    assert abs(float(noise.mean())) < 0.005
    assert torch.equal(noise, _dp(clip=0.5, z=2.0, m=1).aggregate_clients(zero))  # reproducible
    assert not torch.equal(noise, _dp(clip=0.5, z=2.0, m=1, round_=2).aggregate_clients(zero))
    assert not torch.equal(noise, _dp(clip=0.5, z=2.0, m=1, seed=1).aggregate_clients(zero))


def test_the_inner_strategy_steps_on_the_private_mean():
    dp, adam = _dp(inner=FedAdam(server_lr=0.1), clip=1.0, m=2), FedAdam(server_lr=0.1)
    updates = _updates(0.5, 0.8)
    state, reference = torch.zeros(1000), torch.zeros(1000)
    dp.server_update(state, dp.aggregate_clients(updates))
    adam.server_update(reference, (updates[0].update + updates[1].update) / 2)  # no clipping, no noise: FedAdam's step
    torch.testing.assert_close(state, reference)
    assert dp.describe()["name"] == "fedadam" and dp.describe()["dp"]["clip_norm"] == 1.0


@pytest.mark.parametrize("z, q, rounds, delta", [(1.0, 0.5, 10, 1e-5), (0.8, 0.1, 100, 1e-3), (3.0, 1.0, 5, 0.01)])
def test_epsilon_is_the_accountants(z, q, rounds, delta):
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(rounds):  # one step per round, as a run takes them
        accountant.step(noise_multiplier=z, sample_rate=q)
    assert dp_epsilon(z, q, rounds, delta) == pytest.approx(accountant.get_epsilon(delta), abs=1e-6)
    assert dp_epsilon(z, q, 0, delta) == 0.0


def test_a_target_epsilon_picks_the_smallest_noise_that_meets_it():
    z = dp_noise_multiplier(3.0, 0.25, 20, 1e-5)
    assert dp_epsilon(z, 0.25, 20, 1e-5) <= 3.0 < dp_epsilon(z * 0.98, 0.25, 20, 1e-5)
    account = FederatedArguments(num_clients=20, clients_per_round=5, rounds=20, dp_clip_norm=1.0, dp_delta=1e-5,
                                 dp_target_epsilon=3.0).privacy_account()
    assert account == PrivacyAccount(z, 0.25, 1e-5, 3.0) and account.allows(20) and not account.allows(40)
    default = FederatedArguments(num_clients=10, dp_clip_norm=1.0, dp_noise_multiplier=1.0).privacy_account()
    assert default.delta == pytest.approx(10 ** -1.1) and default.sample_rate == 1.0


@pytest.mark.parametrize("settings, match", [
    (dict(dp_clip_norm=0.0, dp_noise_multiplier=1.0), r"--dp-clip-norm must be > 0, got 0.0"),
    (dict(dp_clip_norm=1.0, dp_noise_multiplier=0.0), r"--dp-noise-multiplier must be > 0 \(no noise is no privacy\)"),
    (dict(dp_clip_norm=1.0, dp_noise_multiplier=-1.0), r"--dp-noise-multiplier must be > 0"),
    (dict(dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_delta=1.0), r"--dp-delta must be in \(0, 1\), got 1.0"),
    (dict(dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_delta=0.0), r"--dp-delta must be in \(0, 1\)"),
    (dict(dp_clip_norm=1.0), "--dp-clip-norm needs --dp-noise-multiplier or --dp-target-epsilon"),
    (dict(dp_clip_norm=1.0, dp_target_epsilon=-2.0), "--dp-target-epsilon must be > 0"),
    (dict(dp_clip_norm=1.0, dp_target_epsilon=1e-4, rounds=500),
     r"--dp-target-epsilon 0.0001 over 500 rounds .*Raise the target"),
    (dict(dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_clip_quantile=1.5), r"--dp-clip-quantile must be in \[0, 1\]"),
    (dict(dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_clip_quantile=0.5, dp_clip_lr=0.0), "--dp-clip-lr must be > 0"),
    (dict(dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_clip_quantile=0.5, num_clients=10),
     r"noise multiplier 1 needs a count noise --dp-clipped-count-stddev above 0.5 \(now 0.5"),
    (dict(dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_clipping="secure"), r"--dp-clipping must be one of"),
    (dict(dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_noise_source="urandom"), r"--dp-noise-source must be one of"),
    (dict(dp_clip_norm=1.0, dp_noise_multiplier=1.0, strategy="fedmedian"),
     "--dp-clip-norm needs --strategy fedavg, fedprox, fedavgm, fedadam: fedmedian's step has no sensitivity bound"),
])
def test_a_bad_privacy_setting_is_refused_with_the_arguments(settings, match):
    with pytest.raises(FedSQError, match=match):
        FederatedArguments(**settings)


def test_privacy_flags_without_clipping_are_refused(tmp_path):
    from fedsq_hf.federated import DataArguments, ModelArguments, check_run

    with pytest.raises(FedSQError, match="--dp-noise-multiplier has no effect without --dp-clip-norm"):
        check_run(ModelArguments(), DataArguments(), FederatedArguments(dp_noise_multiplier=1.0, output_dir=str(tmp_path)))
    for flags, match in ((dict(dp_clipping="client"), "--dp-clipping has no effect without --dp-clip-norm"),
                         (dict(dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_clip_lr=0.5),
                          r"--dp-clip-lr has no effect without --dp-clip-quantile \(adaptive clipping\)")):
        with pytest.raises(FedSQError, match=match):
            check_run(ModelArguments(), DataArguments(), FederatedArguments(output_dir=str(tmp_path), **flags))


# every update clipped (by the clients), little noise, the bound adapted each round
DP = dict(dp_clip_norm=0.001, dp_noise_multiplier=0.01, dp_clip_quantile=0.5, dp_clipping="client")


def test_a_dp_run_records_epsilon_and_resumes_exactly(backbone_dir, digits_dir, tmp_path):
    backbone = backbone_dir("resnet10t")
    straight = run_federated(*tiny_args(backbone, digits_dir, tmp_path / "straight", rounds=2, **DP))
    history = [json.loads(line) for line in (tmp_path / "straight" / "history.jsonl").read_text().splitlines()]
    account = FederatedArguments(num_clients=4, clients_per_round=2, rounds=2, **DP).privacy_account()
    assert [h["dp_epsilon"] for h in history] == [account.epsilon(1), account.epsilon(2)]
    assert all(h["dp_clipped_clients"] == 2 for h in history)  # C = 0.001 clips both clients of each round
    assert history[0]["dp_clip_norm"] == 0.001 < history[1]["dp_clip_norm"]  # none within the bound: it grows
    assert straight["privacy"]["epsilon"] == account.epsilon(2) and straight["privacy"]["noise_multiplier"] == 0.01
    assert straight["config"]["strategy_config"]["dp"]["clip_norm"] == 0.001
    card = str(model_card(FedSQModel.from_pretrained(tmp_path / "straight" / "final").config, summary=straight,
                          history=history))
    assert (f"| privacy | DP-FedAvg (client level): updates clipped to L2 norm 0.001, Gaussian noise multiplier 0.01; "
            f"(epsilon {account.epsilon(2):.3g}, delta {4 ** -1.1:.3g}) after 2 rounds at client sampling rate 0.5") in card
    assert "| strategy | fedavg |" in card
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", rounds=2, **DP), callbacks=[StopAfter(1)])
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "resumed", rounds=2, resume=True, **DP))
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    plain = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    run_federated(*tiny_args(backbone, digits_dir, tmp_path / "plain", rounds=2))
    other = load_file(tmp_path / "plain" / "final" / "model.safetensors")
    assert any(not torch.equal(plain[k], other[k]) for k in plain)  # DP changed the weights


def test_noise_goes_only_where_clients_train(backbone_dir, digits_dir, tmp_path):
    """BatchNorm's running statistics (never changed under --bn-mode frozen) get no noise: large noise on
    them would make variances negative and the model NaN."""
    from fedsq_hf import FedSQConfig

    backbone = backbone_dir("resnet10t")
    run_federated(*tiny_args(backbone, digits_dir, tmp_path, rounds=1, dp_clip_norm=1.0, dp_noise_multiplier=1.0))
    final = load_file(tmp_path / "final" / "model.safetensors")
    start = FedSQModel(FedSQConfig(backbone=backbone, num_labels=10)).state_dict()
    stats = [k for k in final if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(final[k], start[k]) for k in stats)
    trained = [k for k in final if k.endswith("conv1.weight")]
    assert all(not torch.equal(final[k], start[k]) for k in trained)


def test_dp_with_batchnorm_trained_on_batches_is_refused(tmp_path):
    from fedsq_hf.federated import DataArguments, ModelArguments, check_run

    with pytest.raises(FedSQError, match="--dp-clip-norm with --bn-mode train: .*use --bn-mode frozen or local"):
        check_run(ModelArguments(bn_mode="train"), DataArguments(),
                  FederatedArguments(dp_clip_norm=1.0, dp_noise_multiplier=1.0, output_dir=str(tmp_path)))


def test_the_run_stops_before_a_round_would_exceed_the_budget(backbone_dir, digits_dir, tmp_path):
    account = PrivacyAccount(0.5, 0.5, 4 ** -1.1)  # 2 of 4 clients a round, the default delta
    budget = (account.epsilon(2) + account.epsilon(3)) / 2  # two rounds fit, three do not
    summary = run_federated(*tiny_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=4, dp_clip_norm=0.05,
                                       dp_noise_multiplier=0.5, dp_target_epsilon=budget))
    assert summary["rounds"] == 2 and summary["privacy"]["epsilon"] <= budget
