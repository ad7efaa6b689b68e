"""FedSQModel: the Hub-aware DualCopy image classifier on a timm backbone."""

from __future__ import annotations

import copy
from concurrent.futures import Future
import json
import os
from typing import Any

import timm
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from torch import nn
from huggingface_hub import ModelCard
from huggingface_hub.hf_api import CommitInfo
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.timm_wrapper import TimmWrapperImageProcessor

from .backbones import classifier_of, load_backbone, looks_like_path
from .configuration_fedsq import FedSQConfig, as_torch_dtype
from .errors import BackboneLoadError, CheckpointError, FedSQError
from .gate_cache import GateCache
from .gating import DualCopy
from .hub import model_card as make_model_card
from .hub import upload_model
from .serialization import atomic_write_json, check_finite, check_state_dict, load_weights, save_weights, tensors_sha256

__all__ = ["FedSQModel", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STRUCTURAL_NAME = "structural.safetensors"  # only for calibrated models (re-frozen gates), whose structural copy is not the backbone
# Passed along by AutoModel / pipeline; they do not apply to FedSQ checkpoints.
_IGNORED_LOAD_KWARGS = {
    "trust_remote_code", "use_safetensors", "low_cpu_mem_usage", "attn_implementation", "adapter_kwargs",
    "code_revision", "proxies",
}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=list))


class FedSQModel(PreTrainedModel):
    """A FedSQ image classifier: `structural` (frozen, gives the gates) + `quantitative` (trained).

    Only `quantitative` (backbone + new head) has parameters, a state dict and gets saved; the
    structural copy is rebuilt from `config.backbone` on load.
    """

    config_class = FedSQConfig
    base_model_prefix = "dual_copy"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: FedSQConfig) -> None:
        super().__init__(config)
        backbone = load_backbone(config.backbone, config.num_labels, config.backbone_weights,
                                 **(config.backbone_kwargs or {}))
        head = classifier_of(backbone)
        _check_backbone_weights(config, backbone, head)
        if isinstance(head, nn.Linear):  # zero-init the new head, as in BiT: fine-tuning starts at uniform logits
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        if config.pretrained_cfg is None:
            config.pretrained_cfg = _jsonable(timm.data.resolve_data_config({}, model=backbone))
        structural = None
        if config.fixed_gating:
            structural = copy.deepcopy(backbone)
            if hasattr(structural, "reset_classifier"):
                structural.reset_classifier(0)  # the structural copy only gives gates; no head needed
        self.dual_copy = DualCopy(
            backbone,
            structural,
            gated_ops=config.gated_ops,
            allow_ungated=config.allow_ungated,
            gating=config.fixed_gating,
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Weights come from the pretrained backbone (and timm's head init); nothing to redo."""

    @property
    def structural(self) -> nn.Module | None:
        return self.dual_copy.structural

    @property
    def quantitative(self) -> nn.Module:
        return self.dual_copy.quantitative

    def train(self, mode: bool = True) -> FedSQModel:
        super().train(mode)
        if mode and self.config.bn_mode == "frozen":
            for module in self.quantitative.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def enable_gate_cache(self, max_bytes: int = 2 << 30, verify: bool = True) -> GateCache | None:
        """Cache structural gates per sample (pass `gate_keys` to forward). Only valid when every
        sample's input is identical each time it is seen: no random augmentation."""
        return self.dual_copy.enable_gate_cache(max_bytes, verify=verify)

    def disable_gate_cache(self) -> None:
        self.dual_copy.disable_gate_cache()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        gate_keys: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        try:
            logits = self.dual_copy(pixel_values, gate_keys=gate_keys)
        except RuntimeError as err:
            if "too small" not in str(err):
                raise
            size = "x".join(map(str, pixel_values.shape[-2:]))
            raise FedSQError(
                f"Input images of {size} px are too small for backbone {self.config.backbone!r} ({err}). "
                "Resize them (e.g. --image-size 64; AlexNet needs at least 63 px)."
            ) from err
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return (logits,) if loss is None else (loss, logits)
        return ImageClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write `config.json` and `model.safetensors` (quantitative copy + head), each atomically."""
        if os.path.isfile(save_directory):
            raise CheckpointError(f"save_pretrained needs a folder, but {os.fspath(save_directory)!r} is a file.")
        if push_to_hub:
            raise ValueError("Use model.push_to_hub(repo_id) to upload; save_pretrained only writes locally.")
        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        config = self.config.to_dict()
        if self.config.fixed_gating and not self.dual_copy.gating:  # gates disabled (a gate warm-up): a plain model
            config.update(fixed_gating=False, calibrated=False, gates_frozen_at_round=None)
        save_weights(os.path.join(save_directory, WEIGHTS_NAME), state_dict or self.state_dict())
        if config["calibrated"] and self.dual_copy.gating:
            save_weights(os.path.join(save_directory, STRUCTURAL_NAME), self.structural.state_dict())
        atomic_write_json(os.path.join(save_directory, CONFIG_NAME), config)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        model_card: ModelCard | None = None,
        license: str = "apache-2.0",
        extra_files: dict[str, str] | None = None,
        run_as_future: bool = False,
    ) -> CommitInfo | Future[CommitInfo]:
        """Upload `config.json`, `model.safetensors` and a generated `README.md` card in one commit.

        Needs Hub credentials (`hf auth login` or `HF_TOKEN`); `revision` names a branch, created if
        missing. `model_card` replaces the generated card (see `fedsq_hf.hub.model_card`);
        `extra_files` (repo path -> local file) go into the same commit; `run_as_future` uploads in the
        background (the weights are staged first).
        """
        return upload_model(
            self.save_pretrained, repo_id, commit_message=commit_message, commit_description=commit_description,
            private=private, token=token, revision=revision, create_pr=create_pr, extra_files=extra_files,
            run_as_future=run_as_future,
            make_card=lambda full_id: model_card or make_model_card(self.config, full_id, license=license),
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        config: FedSQConfig | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        subfolder: str = "",
        dtype: torch.dtype | str | None = None,
        device_map: str | torch.device | None = None,
        **kwargs: Any,
    ) -> FedSQModel:
        """Load a FedSQ checkpoint from a local folder or a Hub repo id.

        Extra keyword arguments that name config fields override them, e.g.
        `backbone="/path/to/local/backbone"` when the original backbone id cannot be reached.
        """
        if model_args:
            raise TypeError("FedSQModel.from_pretrained takes no extra positional arguments.")
        dtype = kwargs.pop("torch_dtype", dtype)
        if dtype is not None and dtype != "auto":
            dtype = as_torch_dtype(dtype, "from_pretrained(dtype=...)")
        source = os.fspath(pretrained_model_name_or_path)
        if subfolder and os.path.isdir(source):
            source, subfolder = os.path.join(source, subfolder), ""
        hub = dict(revision=revision, cache_dir=cache_dir, token=token, subfolder=subfolder or None,
                   local_files_only=local_files_only, force_download=force_download)
        overrides = {}
        for key in list(kwargs):
            if key.startswith("_") or key in _IGNORED_LOAD_KWARGS:
                kwargs.pop(key)
            elif key in FedSQConfig.__dataclass_fields__ or key in ("num_labels",):
                overrides[key] = kwargs.pop(key)
        if kwargs:
            raise TypeError(f"FedSQModel.from_pretrained got unknown arguments: {sorted(kwargs)}.")
        if config is None:
            config = _load_config(_resolve_file(source, CONFIG_NAME, hub), overrides)
        else:
            for key, value in overrides.items():
                setattr(config, key, value)
        model = cls(config)
        weights_path = _resolve_file(source, WEIGHTS_NAME, hub)
        state = load_weights(weights_path)
        check_state_dict(state, model.state_dict(), weights_path)
        model.load_state_dict(state, strict=True)
        check_finite(model.state_dict(), repr(weights_path))  # after the cast to the model's dtypes: no overflow
        if config.calibrated and model.structural is not None:
            path = _resolve_file(source, STRUCTURAL_NAME, hub)
            structural = load_weights(path)
            check_state_dict(structural, model.structural.state_dict(), path)
            model.structural.load_state_dict(structural)
            check_finite(model.structural.state_dict(), repr(path))
        if dtype is not None and dtype != "auto":
            model.to(dtype)
        if device_map is not None and device_map != "auto":
            model.to(device_map)
        model.eval()
        return model


def _check_backbone_weights(config: FedSQConfig, backbone: nn.Module, head: nn.Module) -> None:
    """Record the backbone's weights (head aside) in a new config; refuse other weights where they give the gates."""
    gates_from_backbone = config.fixed_gating and not config.calibrated
    if config.backbone_sha256 is not None and not gates_from_backbone:
        return  # every weight comes from the model's own files: nothing to compare, no need to hash
    head_tensors = {id(t) for t in head.state_dict(keep_vars=True).values()}
    digest = tensors_sha256({k: t for k, t in backbone.state_dict(keep_vars=True).items() if id(t) not in head_tensors})
    if config.backbone_sha256 is None:
        config.backbone_sha256 = digest
    elif digest != config.backbone_sha256:
        raise BackboneLoadError(
            f"The backbone {config.backbone!r} holds other weights than the one this model was built from (SHA-256 "
            f"{digest[:12]}... vs {config.backbone_sha256[:12]}... in its config.json): the structural copy, rebuilt "
            "from it, would give other gates. Point `backbone` at the weights the model was built from."
        )


def _resolve_file(source: str, filename: str, hub: dict[str, Any]) -> str:
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.isfile(path):
            raise CheckpointError(f"{source!r} has no {filename}: it is not a saved FedSQ model (save_pretrained writes one).")
        return path
    if looks_like_path(source):
        found = "is a file, not a folder: pass the folder holding it" if os.path.exists(source) else "does not exist"
        raise CheckpointError(f"Checkpoint folder {source!r} {found}.")
    try:
        return hf_hub_download(source, filename, **hub)
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(
            f"Could not get {filename} of {source!r} from the Hub ({type(err).__name__}: {err}). Check the repo id "
            "and revision, your access (hf auth login or HF_TOKEN), or pass a local folder."
        ) from err


def _load_config(path: str, overrides: dict[str, Any]) -> FedSQConfig:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(
            f"{path!r} is not a readable JSON config ({type(err).__name__}: {err}). It may be corrupted: "
            "download it again, or write it again with save_pretrained."
        ) from err
    if not isinstance(raw, dict) or raw.get("model_type") != FedSQConfig.model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path!r} is not a FedSQ config (model_type={found!r}, expected 'fedsq'). "
            "Load other models with their own class."
        )
    try:  # overrides go through the same checks as the file's fields
        return FedSQConfig.from_dict({**raw, **overrides})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path!r} is not a valid FedSQ config: {err}") from err


AutoConfig.register(FedSQConfig.model_type, FedSQConfig, exist_ok=True)
AutoModelForImageClassification.register(FedSQConfig, FedSQModel, exist_ok=True)
# The preprocessing is timm's, kept in config.json as `pretrained_cfg` like timm checkpoints keep it.
AutoImageProcessor.register(
    FedSQConfig, image_processor_classes={"pil": TimmWrapperImageProcessor, "torchvision": TimmWrapperImageProcessor},
    exist_ok=True,
)
