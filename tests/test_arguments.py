"""The run's arguments: every field has help and a resume mark, each group checks itself, choices are
`Literal`s that --help lists, and what a resume compares is derived from the marks."""

import dataclasses
import typing

import pytest

from fedsq_hf import FedSQError
from fedsq_hf.federated import ClientArguments, DataArguments, FederatedArguments, ModelArguments, parse_arguments
from fedsq_hf.federated.cli import DERIVED_RESUME_KEYS, resume_marks
from fedsq_hf.federated.fields import RESUME_MARKS

GROUPS = (ModelArguments, DataArguments, FederatedArguments)


@pytest.mark.parametrize("group", [*GROUPS, ClientArguments], ids=lambda g: g.__name__)
def test_every_field_has_help_and_a_resume_mark(group):
    for f in dataclasses.fields(group):
        assert f.metadata.get("help"), f"{group.__name__}.{f.name} has no help"
        assert f.metadata.get("resume") in RESUME_MARKS, f"{group.__name__}.{f.name} has no resume mark"


def test_what_a_resume_compares_is_derived_from_the_marks():
    marks = resume_marks()
    assert marks["lr"] == marks["backbone"] == marks["augment"] == marks["update_codec"] == "same"
    assert marks["rounds"] == "grow" and marks.items() >= DERIVED_RESUME_KEYS.items()
    for name in ("output_dir", "resume", "num_workers", "preload", "report_to", "mu", "server_lr", "eval_every"):
        assert name not in marks, name  # outputs, speed, or (the strategy's parameters) compared as strategy_config
    fields = {f.name for g in GROUPS for f in dataclasses.fields(g)}
    assert set(marks) - set(DERIVED_RESUME_KEYS) <= fields


def test_the_client_takes_only_its_local_training_fields():
    local = {f.name for f in dataclasses.fields(ClientArguments)}
    assert {"lr", "batch_size", "local_epochs", "optim", "divergence_factor"} <= local
    assert not local & {"rounds", "seed", "num_clients", "strategy", "mu", "output_dir"}
    client = ClientArguments.from_arguments(FederatedArguments(lr=0.02, rounds=7))
    assert type(client) is ClientArguments and client.lr == 0.02


def test_choices_are_literals_that_help_lists(capsys):
    hints = typing.get_type_hints(FederatedArguments)
    assert typing.get_args(hints["partition"]) == ("iid", "dirichlet", "shards")
    with pytest.raises(SystemExit):
        parse_arguments(["--help"])
    text = capsys.readouterr().out
    assert "{iid,dirichlet,shards}" in text and "{frozen,train,local}" in text and "{none,flip,timm}" in text
    with pytest.raises(SystemExit) as exit_:
        parse_arguments(["--partition", "by-color"])
    assert exit_.value.code == 2 and "invalid choice: 'by-color'" in capsys.readouterr().err


@pytest.mark.parametrize("build, match", [
    (lambda: FederatedArguments(partition="by-color"), r"--partition must be one of \['iid', 'dirichlet', 'shards'\]"),
    (lambda: ModelArguments(bn_mode="fedbn"), r"--bn-mode must be one of \['frozen', 'train', 'local'\]"),
    (lambda: DataArguments(image_size=4), "--image-size must be between 8 and 1024 px"),
    (lambda: ClientArguments(lr=0.0), "--lr must be > 0"),
    (lambda: FederatedArguments(lr=float("nan")), "--lr must be a finite number"),
    (lambda: FederatedArguments(update_codec="zip"), r"--update-codec must be one of \['fp16', 'identity'\]"),
    (lambda: parse_arguments(["--alpha", "0"]), "--alpha must be > 0, got 0.0"),
])
def test_a_group_refuses_a_bad_value_when_it_is_built(build, match):
    with pytest.raises(FedSQError, match=match):
        build()
