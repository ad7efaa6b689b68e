"""Which flags belong to which option: a flag the chosen options never read is refused (or warned about),
from the command line, the Python API and a Flower run config alike."""

import logging

import pytest

from fedsq_hf import FedSQError
from fedsq_hf.federated import DataArguments, FederatedArguments, ModelArguments, check_run, parse_arguments
from fedsq_hf.federated.cli.option_flags import OPTION_FLAGS


def _check(argv, tmp_path):
    check_run(*parse_arguments([*argv, "--output-dir", str(tmp_path / "run")]))


# each at the value it would have anyway: given is given
REFUSED = [
    (["--partition", "iid", "--alpha", "0.5"], "--alpha has no effect without --partition dirichlet"),
    (["--partition", "shards", "--min-partition-size", "10"], "--min-partition-size has no effect without --partition dirichlet"),
    (["--shards-per-client", "2"], "--shards-per-client has no effect without --partition shards"),
    (["--local-steps", "5", "--local-epochs", "1"], r"--local-epochs has no effect without --local-steps 0"),
    (["--optim", "adamw", "--momentum", "0.9"], r"--momentum has no effect without an --optim that takes momentum"),
    (["--calibration-epochs", "1"], "--calibration-epochs has no effect without --calibration-samples > 0"),
    (["--augment", "flip", "--re-prob", "0.25"], "--re-prob has no effect without --augment timm"),
    (["--auto-augment", "rand-m9-mstd0.5"], "--auto-augment has no effect without --augment timm"),
    (["--crop-scale", "0.5", "1.0"], "--crop-scale has no effect without --augment timm"),
    (["--preload", "never", "--preload-budget-mb", "1024"], "--preload-budget-mb has no effect without --preload auto"),
    (["--backbone-weights", "w.pth"], "--backbone-weights has no effect without a torchvision:<name> --backbone"),
    (["--max-warmup-rounds", "5"], "--max-warmup-rounds has no effect without --freeze-gates-when-drift-below"),
    (["--gate-probe-samples", "256"], "--gate-probe-samples has no effect without --freeze-gates-when-drift-below"),
    (["--allow-ungated", "true", "--model", "plain"], "--allow-ungated has no effect without --model fedsq"),
    (["--freeze-gates", "auto", "--skewed-gates", "pretrained", "--rounds", "6", "--client-eval-samples", "128"],
     "--client-eval-samples has no effect without --freeze-gates auto --skewed-gates global or auto"),
    (["--freeze-gates", "auto", "--skewed-gates", "global", "--rounds", "7", "--label-share-below", "0.3"],
     "--label-share-below has no effect without --freeze-gates auto --skewed-gates auto"),
    (["--local-steps", "1", "--local-epochs", "0", "--momentum", "0.5"], "--momentum has no effect without .* more "
     "than one local step"),
    (["--rounds", "1", "--lr-scheduler", "cosine"], r"--lr-scheduler has no effect without --rounds > 1"),
    (["--strategy", "fedtrimmedavg", "--trim-beta", "0.1", "--clients-per-round", "2"],
     r"--trim-beta has no effect without --clients-per-round large enough to trim one \(beta x clients >= 1\)"),
    (["--push-to-hub", "true", "--hub-model-id", "me/x", "--hub-strategy", "every_save", "--save-every", "5",
      "--rounds", "3"], r"--hub-strategy has no effect without --save-every < --rounds"),
    (["--partition", "iid", "--alpha", "0.1", "--shards-per-client", "3"],
     "--alpha has no effect without --partition dirichlet; --shards-per-client has no effect without --partition "
     "shards: drop it, or set what it needs"),
]


@pytest.mark.parametrize("argv, match", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_a_flag_the_options_never_read_is_refused(argv, match, tmp_path):
    with pytest.raises(FedSQError, match=match):
        _check(argv, tmp_path)


@pytest.mark.parametrize("argv", [
    ["--partition", "dirichlet", "--alpha", "0.1", "--min-partition-size", "2"],
    ["--partition", "shards", "--shards-per-client", "3"],
    ["--optim", "sgd", "--momentum", "0.5"],
    ["--optim", "rmsprop", "--momentum", "0.5"],  # timm's RMSprop takes momentum
    ["--local-steps", "5"],
    ["--calibration-samples", "20", "--calibration-epochs", "2"],
    ["--augment", "timm", "--re-prob", "0.25", "--crop-scale", "0.5", "1.0"],
    ["--preload", "auto", "--preload-budget-mb", "64"],
    ["--backbone", "torchvision:resnet18", "--backbone-weights", "w.pth"],
    ["--freeze-gates-when-drift-below", "0.05", "--max-warmup-rounds", "3", "--gate-probe-samples", "64"],
    ["--strategy", "fedtrimmedavg", "--trim-beta", "0.1", "--num-clients", "20"],  # 10 a round: one cut at each end
    ["--rounds", "3", "--lr-scheduler", "cosine"],
    ["--freeze-gates", "auto", "--rounds", "7", "--client-eval-samples", "64", "--label-share-below", "0.3"],
])
def test_a_flag_its_option_reads_is_accepted(argv, tmp_path):
    _check(argv, tmp_path)


def test_hub_settings_without_push_are_warned_about_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fedsq_hf"):
        _check(["--hub-strategy", "every_save", "--hub-license", "mit", "--hub-model-id", "me/model"], tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["Ignoring --hub-model-id, --hub-strategy, --hub-license (read only with --push-to-hub)."]


def test_the_python_api_is_held_to_the_same_table(tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(FedSQError, match="--alpha has no effect without --partition dirichlet"):
        check_run(ModelArguments(), DataArguments(), FederatedArguments(partition="iid", alpha=0.1, output_dir=out))
    with pytest.raises(FedSQError, match="--calibration-epochs has no effect"):
        check_run(ModelArguments(calibration_epochs=3), DataArguments(), FederatedArguments(output_dir=out))
    # an argument left at its default is not a choice the user made
    check_run(ModelArguments(), DataArguments(), FederatedArguments(partition="iid", output_dir=out))


def test_a_flower_run_config_is_held_to_the_same_table(tmp_path):
    pytest.importorskip("flwr")
    from fedsq_hf.flower.run_config import parse_run_config

    config = {"num-clients": 4, "rounds": 2, "output-dir": str(tmp_path / "run"), "partition": "iid", "alpha": 0.1}
    run = parse_run_config(config)
    with pytest.raises(FedSQError, match="--alpha has no effect without --partition dirichlet"):
        check_run(run.model, run.data, run.fed)
    # a key at its default is template text (examples/flower/pyproject.toml lists alpha = 0.5), not a choice
    run = parse_run_config({**config, "alpha": 0.5})
    check_run(run.model, run.data, run.fed)


def test_every_row_names_a_field():
    names = {f for cls in (ModelArguments, DataArguments, FederatedArguments) for f in cls.__dataclass_fields__}
    assert {row.field for row in OPTION_FLAGS} <= names


@pytest.mark.parametrize("repo_id", ["a b/c", "x/y/z", "me/model--x", "me/-model"])
def test_a_bad_hub_model_id_is_refused_with_the_arguments(repo_id):
    with pytest.raises(FedSQError, match=f"--hub-model-id '{repo_id}' is not a Hub repo id .*use namespace/name"):
        FederatedArguments(push_to_hub=True, hub_model_id=repo_id)
