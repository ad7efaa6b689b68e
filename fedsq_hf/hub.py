"""Sharing on the Hugging Face Hub: the generated model card and the one-commit upload (`FedSQModel.push_to_hub`
uses it; this module never calls the model)."""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import shutil
import tempfile
from concurrent.futures import Future
from importlib.resources import files
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import CommitInfo

from .backbones import looks_like_path
from .errors import FedSQError
from .hub_names import check_branch_name

if TYPE_CHECKING:
    from .configuration_fedsq import FedSQConfig

__all__ = ["model_card", "upload_model", "ensure_repo", "eval_metric_keys", "require_credentials", "CARD_TEMPLATE", "TAGS",
           "MODEL_FILE_PATTERNS"]

logger = logging.getLogger(__name__)

CARD_TEMPLATE = files("fedsq_hf.model_cards") / "fedsq_model_card.md"
TAGS = ["federated-learning", "fedsq", "image-classification"]

# The files `save_pretrained` writes for weights (one file, a variant, or shards and their index), at the repo's root:
# a push deletes those of an earlier push that it does not write itself (a stale structural.safetensors, old shards)
MODEL_FILE_PATTERNS = ("*.safetensors", "*.safetensors.index.json")

_visibility_warned: set[tuple[str, bool]] = set()


def _hub_id(name: str | None) -> str | None:
    """`name` when it reads as a Hub repo id (not a local path or a package name without a namespace)."""
    if not name:
        return None
    name = name.removeprefix("hf-hub:")
    return name if name.count("/") == 1 and not looks_like_path(name) and not os.path.exists(name) else None


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _federation(run: dict[str, Any]) -> dict[str, Any]:
    partition = run.get("partition", "?")
    if partition == "dirichlet":
        partition += f" (alpha = {run.get('alpha')})"
    elif partition == "shards":
        partition += f" ({run.get('shards_per_client')} label shards per client)"
    local = (f"{run['local_steps']} steps" if run.get("local_steps") else f"{run.get('local_epochs')} epoch(s)")
    optim = run.get("optim", "sgd")
    local += f", batch size {run.get('batch_size')}, {optim} lr {run.get('lr')}"
    local += f" momentum {run.get('momentum')}" if optim == "sgd" else ""
    if run.get("lr_scheduler", "constant") != "constant" or run.get("warmup_rounds"):
        local += f", {run.get('lr_scheduler')} schedule over rounds ({run.get('warmup_rounds', 0)} warm-up)"
    data = None
    if run.get("num_train_samples") is not None:
        size = run.get("input_size", run.get("image_size"))  # older runs recorded the input size as image_size
        data = (f"{run['num_train_samples']} training / {run.get('num_eval_samples')} evaluation samples at "
                f"{size}x{size} px, augmentation: {run.get('augment', 'none')}")
    strategy = run.get("strategy_config") or {"name": run.get("strategy")}
    params = ", ".join(f"{k} = {v}" for k, v in strategy.items() if k not in ("name", "dp"))
    if run.get("runtime") == "flower":
        runtime = "Flower deployment (a ClientApp at each site, fedsq-hf's round loop in the ServerApp)"
        if data and run.get("site_samples"):
            data = data.replace("training", "training (at the sites)", 1)
    else:
        runtime = "simulation (fedsq-hf on Accelerate)"
    return {
        **run,
        "runtime_md": runtime,
        "partition_md": partition,
        "data_md": data,
        "local_md": local,
        "strategy_md": strategy["name"] + (f" ({params})" if params else ""),
    }


def _gate_warmup(warmup: dict[str, Any] | None, frozen: int | None) -> str | None:
    """The federation table's line on a gate warm-up (rounds without fixed gates, then fixed, or never)."""
    if not warmup:
        return None
    decided = warmup.get("decided")
    if not frozen:
        return f"{warmup['rule']}: " + (f"{decided}, never fixed" if decided else
                                        "the gates were not frozen before the run ended")
    if warmup.get("gates") == "pretrained":
        return (f"rounds 1-{frozen - 1} without fixed gates, then the backbone's pretrained gates from round {frozen} "
                f"({warmup['rule']}; {decided})")
    drift = warmup.get("step_drift_at_freeze")
    measured = f"; gate step drift {100 * drift:.2f}% on {warmup['probe_samples']} probe samples" if drift is not None else ""
    of = warmup.get("gates_of_round")
    model = f"the global model of round {of}" if of is not None and of != frozen - 1 else "the global model"
    return (f"rounds 1-{frozen - 1} without fixed gates, then gates frozen from {model} at round {frozen} "
            f"({warmup['rule']}{measured}; {warmup['bytes_structural'] / 1e6:.1f} MB of structural copies sent)")


def _privacy(summary: dict[str, Any], strategy: dict[str, Any]) -> str | None:
    """The federation table's line on differential privacy: client level, sample level (DP-SGD), or both."""
    lines = []
    if privacy := summary.get("privacy"):
        budget = f" (budget {privacy['target_epsilon']:g})" if privacy.get("target_epsilon") else ""
        lines.append(f"{privacy['mechanism']}: updates clipped to L2 norm {strategy.get('dp', {}).get('clip_norm')}, "
                     f"Gaussian noise multiplier {privacy['noise_multiplier']:.4g}; (epsilon {privacy['epsilon']:.3g}"
                     f"{budget}, delta {privacy['delta']:.3g}) after {privacy['rounds']} rounds at client sampling rate "
                     f"{privacy['sample_rate']:g} ({privacy['accountant']})")
    if dp_sgd := summary.get("dp_sgd"):
        delta = dp_sgd["delta"] if isinstance(dp_sgd["delta"], str) else f"{dp_sgd['delta']:.3g}"
        lines.append(f"{dp_sgd['mechanism']}: per-sample gradients clipped, Gaussian noise multiplier "
                     f"{dp_sgd['noise_multiplier']:.4g}, batch {dp_sgd['batch_size']}; the most exposed client's "
                     f"(epsilon {dp_sgd['epsilon']:.3g}, delta {delta}) ({dp_sgd['accountant']})")
    return "; ".join(lines) or None


def _metric(name: str, value: float | None) -> str:
    """A metric as a person reads it: accuracies and F1 in %, the rest to 4 decimals."""
    if value is None:
        return ""
    return percent(value) if any(k in name for k in ("accuracy", "f1")) else _num(value)


def eval_metric_keys(history: list[dict[str, Any]]) -> list[str]:
    """The `eval_*` metric keys of a run's history, in the order they first appear."""
    return list(dict.fromkeys(k for h in history for k, v in h.items() if k.startswith("eval_") and isinstance(v, float)))


def _results(summary: dict[str, Any], history: list[dict[str, Any]], plot: str | None) -> dict[str, Any]:
    columns = eval_metric_keys(history)
    best = summary.get("metric_for_best_model") or "accuracy"
    final = summary.get("final_metrics") or {}
    return {
        "metric": best.replace("_", " "),
        "best_md": _metric(best, summary.get("best_metric")) or "n/a",
        "final_md": ", ".join(f"{k.removeprefix('eval_').replace('_', ' ')} **{_metric(k, v)}**" for k, v in final.items())
        or "not evaluated",
        "best_round": summary.get("best_round"),
        "rounds": summary.get("rounds"),
        "total_rounds": (summary.get("config") or {}).get("rounds", summary.get("rounds")),
        "plot": plot,
        "columns": [c.removeprefix("eval_").replace("_", " ") for c in columns],
        "table": [
            {"round": h["round"], "train_loss": _num(h.get("train_loss")),
             "cells": [_metric(c, h.get(c)) for c in columns],
             "failed": ", ".join(map(str, h.get("failed_clients") or [])) or "none"}
            for h in history
        ],
    }


def model_card(
    config: FedSQConfig,
    repo_id: str | None = None,
    summary: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    plot: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The README.md of a FedSQ model, from `fedsq_hf/model_cards/fedsq_model_card.md`.

    `summary` and `history` are a federated run's (`FederatedTrainer.train()` and `history.jsonl`);
    with them the card gets the federation setup, the accuracy table and a `model-index` entry.
    `plot` is the repo-relative path of an accuracy plot to show.
    """
    run = (summary or {}).get("config") or {}
    dataset = run.get("dataset")
    dataset_id = _hub_id(dataset)
    dataset_name = dataset_id or (os.path.basename(os.path.normpath(dataset)) if dataset else None)
    name = repo_id.split("/")[-1] if repo_id else f"FedSQ {config.backbone.split('/')[-1]}"
    final = (summary or {}).get("final_metrics") or {}
    eval_results = [  # the uploaded weights are the last round's: their metrics, loss aside
        EvalResult(task_type="image-classification", task_name="Image Classification",
                   dataset_type=dataset_id or dataset_name or "unknown", dataset_name=dataset_name or "unknown",
                   dataset_split=run.get("eval_split") or "validation", metric_type=key.removeprefix("eval_"),
                   metric_name=f"Validation {key.removeprefix('eval_').replace('_', ' ')}", metric_value=round(float(value), 4))
        for key, value in final.items() if key != "eval_loss" and value is not None
    ] or None
    base_model = _hub_id(config.backbone)
    data = ModelCardData(
        library_name="fedsq-hf",
        license=license,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        tags=TAGS + ([run["strategy"]] if run.get("strategy") else []),
        pipeline_tag="image-classification",
        model_name=name if eval_results else None,  # model-index needs a name; otherwise leave it out
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        data,
        template_path=str(CARD_TEMPLATE),
        model_name=name,
        repo_id=repo_id or "path/to/this/model",
        backbone=config.backbone,
        backbone_md=f"[{base_model}](https://huggingface.co/{base_model})" if base_model else f"`{config.backbone}`",
        num_labels=config.num_labels,
        calibrated=config.calibrated,
        gates_frozen_at_round=config.gates_frozen_at_round,
        gate_warmup_md=_gate_warmup((summary or {}).get("gate_warmup"), config.gates_frozen_at_round),
        privacy_md=_privacy(summary or {}, run.get("strategy_config") or {}),
        input_size="(batch, " + ", ".join(map(str, (config.pretrained_cfg or {}).get("input_size", (3, "H", "W")))) + ")",
        federation=_federation({**run, "dataset": dataset_name}) if run else None,
        results=_results(summary, history or [], plot) if summary else None,
    )


def require_credentials(what: str, token: str | bool | None = None) -> None:
    """Raise `FedSQError` (naming `what` needs them) unless a Hub token is passed or configured."""
    if token is None and not get_token():
        hint = "" if what.startswith("--") else ", or pass token="
        raise FedSQError(f"{what} needs Hub credentials: run `hf auth login` or set HF_TOKEN{hint}.")


def ensure_repo(api: HfApi, repo_id: str, *, private: bool | None = None, revision: str | None = None) -> str:
    """Create `repo_id` and the `revision` branch where missing; returns the full repo id. An existing
    repo whose visibility is not `private` is left as it is, with a warning (once per repo)."""
    if revision is not None:
        check_branch_name(revision)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if private is not None:
        _warn_visibility(api, repo_id, private)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return repo_id


def _warn_visibility(api: HfApi, repo_id: str, private: bool) -> None:
    try:
        actual = api.repo_info(repo_id).private
    except HfHubHTTPError:  # created (or reached) a moment ago; the push itself will say what is wrong
        return
    if actual is None or actual == private or (repo_id, private) in _visibility_warned:
        return
    _visibility_warned.add((repo_id, private))
    asked, was = ("private", "public") if private else ("public", "private")
    logger.warning(
        "The Hub repo %s already exists and is %s, not %s as asked (--hub-private-repo / private=): pushing leaves "
        "its visibility as it is. Change it in the repo's settings on the Hub or with `hf repos settings %s --%s`.",
        repo_id, was, asked, repo_id, asked)


def _stale_model_files(api: HfApi, repo_id: str, revision: str | None, folder: str) -> list[str]:
    """The model files (`MODEL_FILE_PATTERNS`, at the repo's root) at `revision` that the staged `folder` lacks."""
    staged = set(os.listdir(folder))
    return [path for path in api.list_repo_files(repo_id, revision=revision)
            if "/" not in path and path not in staged and any(fnmatch.fnmatchcase(path, p) for p in MODEL_FILE_PATTERNS)]


def upload_model(
    save: Callable[[str], None],
    repo_id: str,
    *,
    make_card: Callable[[str], ModelCard],
    extra_files: dict[str, str] | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    run_as_future: bool = False,
    **commit: Any,
) -> CommitInfo | Future[CommitInfo]:
    """Upload what `save(folder)` writes, the card `make_card(full repo id)` as `README.md` and
    `extra_files` (repo path -> local file) in one commit, creating the repo (and the `revision`
    branch) if needed. `commit` goes to `HfApi.upload_folder`: `commit_message`, `commit_description`,
    `create_pr`. The weights files (`MODEL_FILE_PATTERNS`, at the repo's root) of an earlier push that
    `save` does not write are deleted in the same commit. With `run_as_future`, the files are staged now
    and the upload runs in the background.
    """
    require_credentials("push_to_hub", token)
    api = HfApi(token=token)
    repo_id = ensure_repo(api, repo_id, private=private, revision=revision)
    folder = tempfile.mkdtemp(prefix="fedsq-push-")
    commit["commit_message"] = commit.get("commit_message") or "Upload FedSQ model"

    def upload() -> CommitInfo:
        # the weights of an earlier push that this one does not write (a calibrated model's structural copy, old
        # shards) would stay beside the new config.json; README.md and the repo's other files are kept
        stale = _stale_model_files(api, repo_id, None if commit.get("create_pr") else revision, folder)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 delete_patterns=[glob.escape(path) for path in stale] or None, **commit)

    try:
        save(folder)
        make_card(repo_id).save(os.path.join(folder, "README.md"))
        for path_in_repo, local in (extra_files or {}).items():
            shutil.copyfile(local, os.path.join(folder, path_in_repo))
        result = api.run_as_future(upload) if run_as_future else upload()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if run_as_future:
        result.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return result
