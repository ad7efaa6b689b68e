"""Hub sharing over real HTTP: push, pull, model card, pipeline interop, trainer pushes.

The real `huggingface_hub` client talks to `hub_server.LocalHub` on 127.0.0.1 (HF_ENDPOINT); pushes and
loads run in fresh processes, as a second user of the model would.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load, load_file
from transformers import AutoModelForImageClassification, pipeline

from fedsq_hf import FedSQConfig, FedSQModel, model_card
from fedsq_hf.hub import TAGS
from helpers import cli_args, eval_transform, run_example
from hub_server import LocalHub, validate_metadata

TOKEN, USER = "hf_test_token", "alice"


@pytest.fixture(scope="module")
def hub():
    with LocalHub({TOKEN: USER}) as server:
        yield server


@pytest.fixture()
def hub_env(hub, tmp_path):
    """Environment of a process that uses `hub` (with its own empty HF cache)."""
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
            "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"}


def run_python(code: str, env: dict, drop=()) -> subprocess.CompletedProcess:
    full = {k: v for k, v in {**os.environ, **env}.items() if k not in drop}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full,
                          timeout=300)


# Pushes by the owner, then loads and pushes by someone without a token: each group one fresh process (an
# interpreter with fedsq-hf imported takes seconds), its sections run in order and reported apart.
OWNER_PUSHES = {
    "demo": """
        model = FedSQModel(FedSQConfig(backbone=BACKBONE, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"}))
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        model.save_pretrained(OUT + "/main")
        model.push_to_hub(USER + "/fedsq-demo", commit_message="Upload round 7")
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        model.save_pretrained(OUT + "/dev")
        model.push_to_hub("fedsq-demo", revision="dev")  # no namespace: the token's user
    """,
    "secret": """
        FedSQModel(FedSQConfig(backbone=BACKBONE, num_labels=2)).push_to_hub(USER + "/secret", private=True)
    """,
    "replaced": """
        # a calibrated model pushed in shards, then a plain one: the structural copy and the old shards go, the
        # user's files (a LICENSE, weights in a subfolder) stay
        repo = USER + "/fedsq-replaced"
        model = FedSQModel(FedSQConfig(backbone=BACKBONE, num_labels=3))
        model.config.calibrated = True
        model.push_to_hub(repo, max_shard_size="2MB")
        api = HfApi()
        api.upload_file(path_or_fileobj=b"my license", path_in_repo="LICENSE", repo_id=repo)
        api.upload_file(path_or_fileobj=b"my own weights", path_in_repo="teacher/model.safetensors", repo_id=repo)
        print(sorted(api.list_repo_files(repo)))
        model.config.calibrated = False
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        model.push_to_hub(repo, commit_message="plain")
        loaded = FedSQModel.from_pretrained(repo)
        assert not loaded.config.calibrated and loaded.state_dict().keys() == model.state_dict().keys()
        assert all(loaded.state_dict()[k].equal(v) for k, v in model.state_dict().items())
    """,
    "visibility": """
        model = FedSQModel(FedSQConfig(backbone=BACKBONE, num_labels=2))
        model.push_to_hub(USER + "/public-one")
        model.push_to_hub(USER + "/public-one", private=True)
        model.push_to_hub(USER + "/public-one", private=True)
        model.push_to_hub(USER + "/public-one", private=False)
        model.push_to_hub(USER + "/private-new", private=True)
    """,
}
ANONYMOUS = {
    "demo": """
        for revision in ("main", "dev"):
            model = FedSQModel.from_pretrained(USER + "/fedsq-demo", revision=None if revision == "main" else revision)
            ref = load_file(OUT + "/" + revision + "/model.safetensors")
            state = model.state_dict()
            assert set(state) == set(ref) and all(state[k].equal(ref[k]) for k in ref), revision
            assert model.structural is not None and model.config.id2label[2] == "fox"
    """,
    "secret": """
        FedSQModel.from_pretrained(USER + "/secret")
    """,
    "nocreds": """
        FedSQModel(FedSQConfig(backbone=BACKBONE, num_labels=2)).push_to_hub(USER + "/nocreds")
    """,
}
PRELUDE = """
    import sys, traceback
    import torch
    from huggingface_hub import HfApi
    from safetensors.torch import load_file
    from fedsq_hf import FedSQConfig, FedSQModel
"""


def run_sections(sections: dict, env: dict, drop=(), **names) -> dict:
    """Run each section's code in one fresh process, in order: section -> (raised, its stdout, its stderr)."""
    code = textwrap.dedent(PRELUDE) + "".join(f"{k} = {v!r}\n" for k, v in names.items())
    for name, body in sections.items():
        code += (f"print('@@ {name}', flush=True); print('@@ {name}', file=sys.stderr, flush=True)\n"
                 f"try:\n{textwrap.indent(textwrap.dedent(body), '    ')}\nexcept Exception:\n"
                 "    traceback.print_exc(); print('@@ raised', flush=True)\n")
    result = run_python(code, env, drop)
    assert result.returncode == 0, result.stderr[-3000:]

    def by_section(text):
        pieces = re.split(r"^@@ (%s)\n" % "|".join(map(re.escape, sections)), text, flags=re.M)
        return dict(zip(pieces[1::2], pieces[2::2]))

    out, err = by_section(result.stdout), by_section(result.stderr)
    return {name: ("@@ raised" in out.get(name, ""), out.get(name, ""), err.get(name, "")) for name in sections}


@pytest.fixture(scope="module")
def hub_processes(hub, backbone_dir, tmp_path_factory):
    """The owner's pushes, then the anonymous process's loads and push, against a fresh `hub`."""
    folder = tmp_path_factory.mktemp("hub-processes")
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(folder / "hf-cache"),
           "HF_HOME": str(folder / "hf-home"), "OMP_NUM_THREADS": "1"}
    names = dict(BACKBONE=backbone_dir("resnet10t"), OUT=str(folder), USER=USER)
    owner = run_sections(OWNER_PUSHES, env, **names)
    return owner, run_sections(ANONYMOUS, env, drop=("HF_TOKEN",), **names)


@pytest.mark.slow
def test_push_then_load_in_a_fresh_process(hub, hub_processes):
    owner, anonymous = hub_processes
    assert not owner["demo"][0], owner["demo"][2][-3000:]
    assert hub.state.messages[f"{USER}/fedsq-demo"] == [("main", "Upload round 7"), ("dev", "Upload FedSQ model")]
    files = hub.state.repos[f"{USER}/fedsq-demo"].resolve("main").files
    assert sorted(files) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    weights = load(files["model.safetensors"])
    assert weights and all(k.startswith("dual_copy.quantitative.") for k in weights)  # never the structural copy
    assert json.loads(files["config.json"])["model_type"] == "fedsq"
    assert ModelCard(files["README.md"].decode()).data.library_name == "fedsq-hf"
    assert not anonymous["demo"][0], anonymous["demo"][2][-3000:]  # a public repo loads without a token


@pytest.mark.slow
def test_private_repo_needs_the_owners_token(hub, hub_processes):
    owner, anonymous = hub_processes
    assert not owner["secret"][0] and hub.state.repos[f"{USER}/secret"].private
    raised, _, stderr = anonymous["secret"]
    assert raised and "CheckpointError" in stderr and "hf auth login or HF_TOKEN" in stderr


@pytest.mark.slow
def test_push_without_credentials_fails_before_any_upload(hub, hub_processes):
    raised, _, stderr = hub_processes[1]["nocreds"]
    assert raised and "FedSQError: push_to_hub needs Hub credentials: run `hf auth login`" in stderr
    assert f"{USER}/nocreds" not in hub.state.repos


@pytest.mark.slow
def test_push_deletes_the_model_files_of_an_earlier_push_only(hub, hub_processes):
    raised, stdout, stderr = hub_processes[0]["replaced"]
    assert not raised, stderr[-3000:]
    first = eval(stdout.strip().splitlines()[0])
    assert "structural.safetensors.index.json" in first and "model.safetensors.index.json" in first
    files = hub.state.repos[f"{USER}/fedsq-replaced"].resolve("main").files
    assert sorted(files) == [".gitattributes", "LICENSE", "README.md", "config.json", "model.safetensors",
                             "teacher/model.safetensors"]
    assert json.loads(files["config.json"])["calibrated"] is False


@pytest.mark.slow
def test_push_warns_once_when_an_existing_repos_visibility_differs(hub, hub_processes):
    raised, _, stderr = hub_processes[0]["visibility"]
    assert not raised, stderr[-3000:]
    warning = (f"The Hub repo {USER}/public-one already exists and is public, not private as asked (--hub-private-repo "
               f"/ private=): pushing leaves its visibility as it is. Change it in the repo's settings on the Hub or "
               f"with `hf repos settings {USER}/public-one --private`.")
    assert stderr.count(warning) == 1 and "already exists" not in stderr.replace(warning, "")
    assert not hub.state.repos[f"{USER}/public-one"].private and hub.state.repos[f"{USER}/private-new"].private


def _run_summary():
    history = [
        {"round": 1, "train_loss": 1.2, "eval_loss": 1.0, "eval_accuracy": 0.5, "failed_clients": []},
        {"round": 2, "train_loss": 0.9, "eval_loss": 0.8, "eval_accuracy": 0.75, "failed_clients": [3]},
        {"round": 3, "train_loss": 0.8, "eval_loss": 0.85, "eval_accuracy": 0.7, "failed_clients": []},
    ]
    config = {"dataset": "uoft-cs/cifar10", "num_clients": 10, "clients_per_round": 5, "partition": "dirichlet",
              "alpha": 0.1, "rounds": 3, "local_epochs": 1, "local_steps": 0, "batch_size": 32, "lr": 0.003,
              "momentum": 0.9, "strategy": "fedprox", "strategy_config": {"name": "fedprox", "mu": 0.01},
              "model": "fedsq", "bn_mode": "frozen", "seed": 0}
    summary = {"metric_for_best_model": "accuracy", "best_metric": 0.75, "best_round": 2,
               "final_metrics": {"eval_loss": 0.85, "eval_accuracy": 0.7}, "rounds": 3, "config": config}
    return summary, history


def test_model_card_metadata_and_body():
    summary, history = _run_summary()
    config = FedSQConfig(backbone="timm/resnet18.a1_in1k", num_labels=10, pretrained_cfg={"input_size": [3, 32, 32]})
    card = model_card(config, "alice/r18-fedsq", summary=summary, history=history, plot="accuracy.png")
    text = str(card)
    assert validate_metadata(text) == []
    data = ModelCard(text).data  # parsed back, as the Hub and other tools read it
    assert data.library_name == "fedsq-hf" and data.base_model == "timm/resnet18.a1_in1k"
    assert data.datasets == ["uoft-cs/cifar10"] and data.license == "apache-2.0"
    assert set(TAGS) <= set(data.tags) and "fedprox" in data.tags
    (result,) = data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("accuracy", 0.7, "uoft-cs/cifar10")
    for expected in ("| clients | 10 (5 sampled per round) |", "dirichlet (alpha = 0.1)", "fedprox (mu = 0.01)",
                     "| 2 | 0.9000 | 0.8000 | 75.00% | 3 |", "**75.00%**, was reached at round **2** (rounds-to-best)",
                     "![Validation metrics per round](accuracy.png)", "loss **0.8500**, accuracy **70.00%** on the validation data",
                     "| round | train loss | loss | accuracy | clients excluded |", "sgd lr 0.003 momentum 0.9", 'pipeline("image-classification", model="alice/r18-fedsq")',
                     "(batch, 3, 32, 32)"):
        assert expected in text, expected


def test_model_card_without_a_run_or_hub_backbone(backbone_dir):
    config = FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=2)
    text = str(model_card(config))
    assert validate_metadata(text) == []
    data = ModelCard(text).data
    assert data.base_model is None and data.eval_results is None  # a local path is no base_model
    assert "## Federation" not in text and backbone_dir("resnet10t") in text


def test_metadata_check_is_not_a_rubber_stamp():
    bad = "---\nlicense: my-own-license\nbase_model: /home/me/backbone\nmodel-index:\n- name: x\n  results: 3\n---\nbody"
    errors = validate_metadata(bad)
    assert len(errors) == 3, errors


def _image(seed=0, size=(45, 60)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def test_pipeline_and_auto_model_load_a_saved_model(backbone_dir, tmp_path):
    config = FedSQConfig(backbone=backbone_dir("resnet10t"), num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    model = FedSQModel(config)
    torch.manual_seed(0)
    with torch.no_grad():
        model.quantitative.get_classifier().weight.normal_()
    model.config.pretrained_cfg = {**model.config.pretrained_cfg, "input_size": [3, 40, 40]}
    model.save_pretrained(tmp_path)
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)) is FedSQModel
    classify = pipeline("image-classification", model=str(tmp_path))
    image = _image()
    pixels = classify.image_processor(image)["pixel_values"]
    assert pixels.shape == (1, 3, 40, 40)
    torch.testing.assert_close(pixels[0], eval_transform(model.config.pretrained_cfg)(image))  # = training preprocessing
    with torch.no_grad():
        probs = model.eval()(pixels).logits.softmax(-1)[0]
    top = classify(image, top_k=3)
    assert [r["label"] for r in top] == [config.id2label[int(i)] for i in probs.argsort(descending=True)]
    assert top[0]["score"] == pytest.approx(float(probs.max()), abs=1e-5)


@pytest.mark.slow
def test_trainer_pushes_every_save_to_a_branch(hub, hub_env, backbone_dir, digits_dir, tmp_path):
    out = tmp_path / "run"
    args = cli_args(backbone_dir("resnet10t"), digits_dir, out, rounds=3, push_to_hub=True,
                    hub_model_id=f"{USER}/fed-digits", hub_strategy="every_save", hub_revision="runs")
    result = run_example(args, env=hub_env)
    assert result.returncode == 0, result.stderr[-3000:]
    messages = hub.state.messages[f"{USER}/fed-digits"]
    assert [m.split(":")[0] for _, m in messages] == ["Round 1/3", "Round 2/3", "Round 3/3"]
    assert {branch for branch, _ in messages} == {"runs"}
    files = hub.state.repos[f"{USER}/fed-digits"].resolve("runs").files
    assert {"README.md", "config.json", "model.safetensors", "metrics.png"} <= set(files)
    final = load_file(out / "final" / "model.safetensors")
    pushed = load(files["model.safetensors"])
    assert all(pushed[k].equal(final[k]) for k in final)
    card = files["README.md"].decode()
    summary = json.loads((out / "summary.json").read_text())
    assert validate_metadata(card) == [] and card.count("\n| 3 |") == 1
    assert f"reached at round **{summary['best_round']}**" in card
    assert Image.open(io.BytesIO(files["metrics.png"])).size[0] > 100


@pytest.mark.slow
def test_flower_server_pushes_the_model_with_its_card(hub, hub_env, backbone_dir, digits_dir, tmp_path):
    """The ServerApp's round loop pushes as the simulator's does; the card says where it trained."""
    pytest.importorskip("flwr")
    out, tests = tmp_path / "run", os.path.dirname(os.path.abspath(__file__))
    pushed = run_python(f"""
        import sys
        sys.path.insert(0, {tests!r})
        from fedsq_hf.flower import build_server, parse_run_config
        from flower_helpers import InProcessGrid, run_config
        config = run_config({backbone_dir("resnet10t")!r}, {digits_dir!r}, {str(out)!r}, rounds=1, push_to_hub=True,
                            hub_model_id="{USER}/fed-flower")
        nodes = {{100 + i: {{"partition-id": i, "num-partitions": 2, "state-dir": {str(tmp_path)!r}}} for i in range(2)}}
        build_server(InProcessGrid(config, nodes), parse_run_config(config)).train()
    """, hub_env)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    files = hub.state.repos[f"{USER}/fed-flower"].resolve("main").files
    assert {"README.md", "config.json", "model.safetensors"} <= set(files)
    card = files["README.md"].decode()
    assert validate_metadata(card) == [] and "| runtime | Flower deployment" in card
    assert "training (at the sites)" in card


def test_trainer_with_unreachable_repo_fails_before_training(hub, hub_env, backbone_dir, digits_dir, tmp_path):
    args = cli_args(backbone_dir("resnet10t"), digits_dir, tmp_path, rounds=1, push_to_hub=True,
                    hub_model_id="someone-else/model")
    result = run_example(args, env=hub_env)
    assert result.returncode == 2
    assert "error: --push-to-hub: cannot create or reach the Hub repo 'someone-else/model'" in result.stderr
    assert not (tmp_path / "history.jsonl").exists()



# -- the Hub fields are checked before anything loads; a failed push says how to push again -------------------------

def test_hub_revision_is_checked_as_a_git_branch_name():
    from fedsq_hf.errors import FedSQError
    from fedsq_hf.federated import FederatedArguments
    from fedsq_hf.hub_names import check_branch_name

    with pytest.raises(FedSQError, match=r"--hub-revision 'bad\.\.rev~\^:' is not a valid git branch name \(it contains "
                                         r"'\.\.', ':', '\^', '~'\): use letters, digits"):
        FederatedArguments(hub_revision="bad..rev~^:")
    for good in ("runs", "exp/alpha-0.1", "refs/pr/1", "v1.0", "main"):
        assert FederatedArguments(hub_revision=good).hub_revision == good
    names = ["a b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "a\x01b", "a\x7fb", "-x", "/x", "x/", "x.", "x.lock",
             "x.lock/y", ".x", "x/.y", "a@{b", "a//b", "a/./b", "x..", "", "a@b", "@x", "{a}", "a.lock.b", "ünï", "a/b_c"]
    if shutil.which("git"):  # the same verdicts as git's own check
        for name in names:
            git = subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True).returncode == 0
            try:
                check_branch_name(name)
                ours = True
            except FedSQError:
                ours = False
            assert ours == git, (name, git)


@pytest.mark.parametrize("license_, expected", [
    ("my-own-license", "--hub-license 'my-own-license' is not a license id the Hub accepts "
                       "(https://huggingface.co/docs/hub/repositories-licenses). Use 'other' for a license not on that list"),
    ("", "--hub-license is empty: give a license id the Hub accepts"),
    ("Apache2", "Did you mean 'apache-2.0'? Or use 'other'"),
    ("mit-license", "Did you mean 'mit'?"),
], ids=["own", "empty", "close", "suffix"])
def test_hub_license_must_be_one_the_hub_accepts(license_, expected):
    from fedsq_hf.errors import FedSQError
    from fedsq_hf.federated import FederatedArguments
    from fedsq_hf.hub_names import HUB_LICENSES

    with pytest.raises(FedSQError) as err:
        FederatedArguments(hub_license=license_)
    assert expected in str(err.value)
    assert {"apache-2.0", "mit", "cc-by-nc-4.0", "llama3.1", "other"} <= set(HUB_LICENSES)
    assert FederatedArguments(hub_license="cc-by-nc-sa-4.0").hub_license == "cc-by-nc-sa-4.0"


@pytest.mark.parametrize("flag, value, expected", [
    ("hub_revision", "bad..rev~^:", "error: --hub-revision 'bad..rev~^:' is not a valid git branch name"),
    ("hub_license", "my-own-license", "error: --hub-license 'my-own-license' is not a license id the Hub accepts"),
], ids=["revision", "license"])
def test_bad_hub_field_fails_before_the_repo_or_data(hub, backbone_dir, digits_dir, tmp_path, flag, value, expected,
                                                     capsys):
    from fedsq_hf.federated.cli import federated as cli  # in process: the refusal comes before the Hub is reached

    repo = f"{USER}/checked-{flag}"
    args = cli_args(backbone_dir("resnet10t"), digits_dir, tmp_path / "run", rounds=1, push_to_hub=True,
                    hub_model_id=repo, **{flag: value})
    assert cli.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert repo not in hub.state.repos and not (tmp_path / "run").exists()


def _fake_push_run(tmp_path, monkeypatch, push, **args):
    """(callback, args, state, model) of a run whose model's push_to_hub is `push` (card and plot stubbed)."""
    from types import SimpleNamespace

    from fedsq_hf.federated.callbacks import hub_push

    monkeypatch.setattr(hub_push, "plot_metrics", lambda *a, **k: None)
    monkeypatch.setattr(hub_push, "model_card", lambda *a, **k: None)
    args = SimpleNamespace(**{"output_dir": str(tmp_path), "hub_model_id": f"{USER}/fed", "hub_strategy": "every_save",
                              "hub_revision": None, "hub_private_repo": None, "hub_license": "apache-2.0", **args})
    summary = {"final_metrics": {"eval_accuracy": 0.5}}
    state = SimpleNamespace(is_world_process_zero=True, history=[], best_round=1, best_key="eval_accuracy",
                            metric_for_best_model="accuracy", round=1, max_rounds=3, summary=lambda: summary)
    return hub_push.HubPushCallback(), args, state, SimpleNamespace(config=None, push_to_hub=push), summary


def _http_error():
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    return HfHubHTTPError("500 Server Error: Internal Server Error for url: http://hub/api/models/alice/fed/commit/main\n"
                          "Request ID: abc", response=httpx.Response(500, request=httpx.Request("POST", "http://hub")))


@pytest.mark.parametrize("error, cause", [
    (ValueError('Invalid metadata in README.md.\n- "license" must be a known license id'),
     'ValueError: Invalid metadata in README.md. - "license" must be a known license id'),
    (_http_error, "HfHubHTTPError: 500 Server Error: Internal Server Error for url"),
    (OSError(28, "No space left on device"), "OSError: [Errno 28] No space left on device"),
    (RuntimeError("x" * 1000), "RuntimeError: xxx"),
], ids=["card", "http", "disk", "long"])
def test_failed_final_push_is_one_line_saying_how_to_push_again(tmp_path, monkeypatch, error, cause):
    from fedsq_hf.errors import FedSQError

    error = error() if callable(error) else error

    def push(*args, **kwargs):
        raise error

    callback, args, state, model, summary = _fake_push_run(tmp_path, monkeypatch, push, hub_revision="runs")
    with pytest.raises(FedSQError) as err:
        callback.on_train_end(args, state, None, model=model, summary=summary)
    message, final = str(err.value), str(tmp_path / "final")
    assert "\n" not in message and len(message) < 800 and err.value.__cause__ is error
    assert message.startswith(f"--push-to-hub: the final push to '{USER}/fed' failed ({cause}")
    assert f"The run's outputs are saved in {tmp_path} (the model in {final})" in message
    assert f"`FedSQModel.from_pretrained({final!r}).push_to_hub('{USER}/fed', revision='runs')`" in message
    assert f"`hf upload {USER}/fed {final} . --revision runs`" in message


def test_failed_checkpoint_push_is_a_warning_and_training_goes_on(tmp_path, monkeypatch, caplog):
    from concurrent.futures import Future

    calls = []

    def push(*args, run_as_future=False, **kwargs):
        calls.append(run_as_future)
        if len(calls) == 1:  # staging or reaching the repo fails at once
            raise OSError(28, "No space left on device")
        future = Future()
        if len(calls) == 2:  # the background upload fails
            future.set_exception(ValueError("Invalid metadata in README.md.\n- bad"))
        else:
            future.set_result("ok")
        return future

    callback, args, state, model, summary = _fake_push_run(tmp_path, monkeypatch, push)
    control = type("Control", (), {"should_training_stop": False})()
    with caplog.at_level("WARNING", logger="fedsq_hf"):
        callback.on_save(args, state, control, model=model, run_config={})
        state.round = 2
        callback.on_save(args, state, control, model=model, run_config={})
        state.round = 3
        callback.on_train_end(args, state, control, model=model, summary=summary)  # the final push works: no error
    assert calls == [True, True, False]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["round 1: push to the Hub failed (OSError: [Errno 28] No space left on device); training goes on",
                        "round 2: push to the Hub failed (ValueError: Invalid metadata in README.md. - bad); training "
                        "goes on"]


@pytest.mark.slow
def test_trainer_whose_pushes_the_hub_refuses_ends_in_one_line(hub, hub_env, backbone_dir, digits_dir, tmp_path):
    """cc-by-sa-4.0 is a Hub license the stand-in Hub does not know: its README check refuses every push."""
    out, repo = tmp_path / "run", f"{USER}/fed-refused"
    args = cli_args(backbone_dir("resnet10t"), digits_dir, out, rounds=2, push_to_hub=True, hub_model_id=repo,
                    hub_strategy="every_save", hub_license="cc-by-sa-4.0")
    result = run_example(args, env=hub_env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "round 1: push to the Hub failed (ValueError: Invalid metadata in README.md." in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --push-to-hub: the final push to '{repo}' failed (ValueError: Invalid metadata in "
                           "README.md. - \"license\" must be a known license id, got 'cc-by-sa-4.0')")
    assert f"FedSQModel.from_pretrained({str(out / 'final')!r}).push_to_hub('{repo}')" in last
    assert (out / "final" / "model.safetensors").is_file() and (out / "summary.json").is_file()
    assert hub.state.messages[repo] == []  # nothing was committed


