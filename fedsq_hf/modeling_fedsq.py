"""FedSQModel: the Hub-aware DualCopy image classifier on a timm backbone."""

from __future__ import annotations

import copy
from concurrent.futures import Future
import functools
import json
import os
from typing import Any

import timm
import torch
from torch import nn
from huggingface_hub import ModelCard
from huggingface_hub.hf_api import CommitInfo
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .backbones import classifier_of, load_backbone
from .checkpoint_files import (CONFIG_NAME, STRUCTURAL_NAME, WEIGHTS_NAME, check_shard_size, check_variant, load_config,
                               load_tensors, one_device, resolve_file)
from .configuration_fedsq import FedSQConfig, as_torch_dtype
from .errors import BackboneLoadError, CheckpointError, FedSQError, UnsupportedArgumentError
from .gate_cache import GateCache
from .gating import DualCopy
from .hub import model_card as make_model_card
from .hub import upload_model
from .image_processing_fedsq import FedSQImageProcessor  # noqa: F401  (registers it for AutoImageProcessor)
from .serialization import (atomic_write_json, check_finite, check_state_dict, save_tensors,
                            tensors_sha256)

__all__ = ["FedSQModel", "CONFIG_NAME", "WEIGHTS_NAME"]

# Passed along by AutoModel / pipeline; they do not apply to FedSQ checkpoints.
_IGNORED_LOAD_KWARGS = {
    "trust_remote_code", "low_cpu_mem_usage", "attn_implementation", "adapter_kwargs", "code_revision", "proxies",
}
# transformers' save_pretrained options that change nothing here (no adapters, no weight renaming, no upload).
_NOOP_SAVE_KWARGS = {"token", "save_peft_format", "save_original_format"}
_SAFETENSORS_ONLY = ("FedSQ checkpoints are safetensors only: loading one never unpickles, since a pickle file can run "
                     "code.")


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
        if not pixel_values.is_floating_point():
            raise FedSQError(
                f"pixel_values must be a floating-point tensor of normalised images, got {pixel_values.dtype}. "
                "Preprocess images with AutoImageProcessor.from_pretrained(<model folder or repo id>)."
            )
        pixel_values = pixel_values.to(self.dtype)  # as transformers models do: float32 images on a bfloat16 model
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
        max_shard_size: int | str = "50GB",
        variant: str | None = None,
        safe_serialization: bool = True,
        **kwargs: Any,
    ) -> None:
        """Write `config.json` and the weights (quantitative copy + head) as safetensors, each file atomically.

        Files are named as transformers names them: `model.safetensors`, `model.<variant>.safetensors`, or
        shards `model-00001-of-0000N.safetensors` and `model.safetensors.index.json` past `max_shard_size`.
        Files of other variants are left alone; this variant's files of an earlier save are replaced.
        """
        if os.path.isfile(save_directory):
            raise CheckpointError(f"save_pretrained needs a folder, but {os.fspath(save_directory)!r} is a file.")
        if push_to_hub:
            raise UnsupportedArgumentError("Use model.push_to_hub(repo_id) to upload; save_pretrained only writes locally.")
        if not safe_serialization:
            raise UnsupportedArgumentError(f"save_pretrained(safe_serialization=False) would write a pickle. {_SAFETENSORS_ONLY} "
                                           "Drop safe_serialization=False.")
        unknown = sorted(set(kwargs) - _NOOP_SAVE_KWARGS)
        if unknown:
            raise UnsupportedArgumentError(f"FedSQModel.save_pretrained got unknown arguments: {unknown}.")
        check_variant(variant)
        check_shard_size(max_shard_size)
        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        config = self.config.to_dict()
        if self.config.fixed_gating and not self.dual_copy.gating:  # gates disabled (a gate warm-up): a plain model
            config.update(fixed_gating=False, calibrated=False, gates_frozen_at_round=None)
        state = self.state_dict() if state_dict is None else state_dict
        save_tensors(save_directory, WEIGHTS_NAME, state, variant, max_shard_size)
        if config["calibrated"] and self.dual_copy.gating:
            save_tensors(save_directory, STRUCTURAL_NAME, self.structural.state_dict(), variant, max_shard_size)
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
        max_shard_size: int | str = "50GB",
        tags: list[str] | None = None,
    ) -> CommitInfo | Future[CommitInfo]:
        """Upload `config.json`, `model.safetensors` and a generated `README.md` card in one commit.

        Needs Hub credentials (`hf auth login` or `HF_TOKEN`); `revision` names a branch, created if
        missing. `model_card` replaces the generated card (see `fedsq_hf.hub.model_card`);
        `extra_files` (repo path -> local file) go into the same commit; `run_as_future` uploads in the
        background (the weights are staged first). `max_shard_size` shards the weights as `save_pretrained`
        does; `tags` are added to the card's.
        """
        check_shard_size(max_shard_size)

        def make_card(full_id: str) -> ModelCard:
            card = model_card or make_model_card(self.config, full_id, license=license)
            if tags:
                card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *tags]))
            return card

        return upload_model(
            functools.partial(self.save_pretrained, max_shard_size=max_shard_size), repo_id,
            commit_message=commit_message, commit_description=commit_description, private=private, token=token,
            revision=revision, create_pr=create_pr, extra_files=extra_files, run_as_future=run_as_future,
            make_card=make_card,
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
        device_map: str | int | torch.device | dict[str, Any] | None = None,
        variant: str | None = None,
        **kwargs: Any,
    ) -> FedSQModel:
        """Load a FedSQ checkpoint from a local folder or a Hub repo id.

        As in transformers: `dtype` (default "auto": the checkpoint's own), `variant` (loads
        `model.<variant>.safetensors`), sharded checkpoints through their index, `device_map` naming one
        device (or "auto": the accelerator if there is one). Extra keyword arguments that name config
        fields override them, e.g. `backbone="/path/to/local/backbone"` when the original backbone id
        cannot be reached.
        """
        if model_args:
            raise TypeError("FedSQModel.from_pretrained takes no extra positional arguments.")
        dtype = kwargs.pop("torch_dtype", dtype)
        if dtype is not None and dtype != "auto":
            dtype = as_torch_dtype(dtype, "from_pretrained(dtype=...)")
        if kwargs.pop("use_safetensors", None) is False:
            raise UnsupportedArgumentError(f"from_pretrained(use_safetensors=False): {_SAFETENSORS_ONLY} Drop the argument.")
        check_variant(variant)
        device = one_device(device_map)
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
            config = load_config(resolve_file(source, CONFIG_NAME, hub), overrides)
        else:
            for key, value in overrides.items():
                setattr(config, key, value)
        state, weights_path = load_tensors(source, WEIGHTS_NAME, hub, variant)
        model = cls(config)
        check_state_dict(state, model.state_dict(), weights_path)
        model.load_state_dict(state, strict=True)
        structural_path = None
        if config.calibrated and model.structural is not None:
            structural, structural_path = load_tensors(source, STRUCTURAL_NAME, hub, variant)
            check_state_dict(structural, model.structural.state_dict(), structural_path)
            model.structural.load_state_dict(structural)
        if dtype in (None, "auto"):  # as transformers 5 by default: the dtype the weights were saved in
            dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
        if dtype is not None:
            model.to(dtype)
        # after the casts to the model's dtypes: no overflow
        check_finite(model.state_dict(), repr(weights_path))
        if structural_path is not None:
            check_finite(model.structural.state_dict(), repr(structural_path))
        if device is not None:
            model.to(device)
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


AutoConfig.register(FedSQConfig.model_type, FedSQConfig, exist_ok=True)
AutoModelForImageClassification.register(FedSQConfig, FedSQModel, exist_ok=True)
