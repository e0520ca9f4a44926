"""`MolexModel`: the peft tuner that wraps every transformer layer of a layers pattern in a `MolexLayer`."""

from __future__ import annotations

import re
from typing import Any

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .config import MolexConfig
from .layer import MolexLayer

# Where the transformer layers live, per model type (the dotted path of their ModuleList).
DEFAULT_LAYERS_PATTERNS: dict[str, str] = {
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "electra", "deberta", "deberta-v2", "mpnet", "camembert"),
        "encoder.layer",
    ),
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "smollm3"),
        "layers",
    ),
}


def layers_regex(layers_pattern: str) -> str:
    """Regex (peft `re.fullmatch`) for the numbered children of the ModuleList at `layers_pattern`."""
    return rf"(.*\.)?{re.escape(layers_pattern)}\.\d+"


def _hidden_size(config: Any) -> int:
    for attr in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(
        "MoLEx could not read the hidden size from the model config (hidden_size/n_embd/d_model)."
    )


class MolexModel(BaseTuner):
    """Mixture of Layer Experts: per-layer routers choose other pretrained layers to mix into each layer."""

    prefix: str = "molex_"
    tuner_layer_cls = MolexLayer
    target_module_mapping = {k: layers_regex(v) for k, v in DEFAULT_LAYERS_PATTERNS.items()}

    def _prepare_adapter_config(self, peft_config: MolexConfig, model_config: dict) -> MolexConfig:
        if peft_config.target_modules is None:
            pattern = peft_config.layers_pattern or DEFAULT_LAYERS_PATTERNS.get(
                model_config.get("model_type", "")
            )
            if pattern is None:
                raise ValueError(
                    f"MoLEx has no default layers pattern for model type {model_config.get('model_type')!r}; "
                    "set MolexConfig.layers_pattern to the dotted path of the ModuleList of transformer layers "
                    "(e.g. 'encoder.layer' or 'model.layers')."
                )
            peft_config.target_modules = layers_regex(pattern)
        return peft_config

    def _pre_injection_hook(self, model: nn.Module, config: MolexConfig, adapter_name: str) -> None:
        self._ensure_shared_state(model)

    def _ensure_shared_state(self, model: nn.Module) -> None:
        if "_molex_shared" in self.__dict__:
            return
        # Plain dict shared by reference with every layer: holds the 2-D padding mask of the current
        # forward so that sequence routing pools only real tokens. A pre-hook on the base model sees it
        # whichever way peft calls the model (also task_type=None, which bypasses the tuner's forward).
        shared: dict[str, Any] = {"attention_mask": None}
        self.__dict__["_molex_shared"] = shared

        def capture_mask(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            shared["attention_mask"] = kwargs.get("attention_mask")

        self.__dict__["_molex_hook"] = model.register_forward_pre_hook(capture_mask, with_kwargs=True)

    def _create_and_replace(
        self,
        peft_config: MolexConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        self._ensure_shared_state(self.model)
        if isinstance(target, MolexLayer):
            target.update_layer(adapter_name, peft_config)
            return
        if not isinstance(parent, nn.ModuleList) or not target_name.isdigit():
            raise ValueError(
                f"MoLEx targets must be numbered entries of a ModuleList of transformer layers; {current_key!r} "
                "is not. Check MolexConfig.layers_pattern."
            )
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        new_module = MolexLayer(
            base,
            adapter_name,
            peft_config,
            hidden_size=_hidden_size(self.model.config),
            siblings=parent,
            index=int(target_name),
            shared_state=self.__dict__["_molex_shared"],
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        # Whole layers have no single `.weight`: place the router next to the layer's first real parameter.
        setattr(parent, child_name, new_module)
        if isinstance(new_module, BaseTunerLayer):
            for param in child.parameters():
                if param.device.type != "meta":
                    for name, module in new_module.named_children():
                        if name.startswith(self.prefix):
                            module.to(param.device)
                    break

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(
            "MoLEx cannot be merged into the base weights: each layer's output mixes other whole layers "
            "chosen per input. Use `unload()` to get the base model back, or keep the adapter."
        )

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs: Any) -> nn.Module:
        model = super()._unload_and_optionally_merge(merge=merge, **kwargs)
        hook = self.__dict__.pop("_molex_hook", None)
        if hook is not None:
            hook.remove()
        self.__dict__.pop("_molex_shared", None)
        return model
