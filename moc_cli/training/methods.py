"""`method.name` -> a peft config applied to the base model (or full fine-tuning).

Baselines go through peft's own configs, so comparing MoC with LoRA is one override away
(`method.name=lora`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

from moc_cli.training._sections import as_dict
from moc_cli.training.errors import RunSetupError

if TYPE_CHECKING:
    from torch import nn

METHODS = ("moc", "control", "lora", "dora", "ia3", "full", "molex")

# Heads that are newly initialised for a task and must train and be saved with the adapter.
HEAD_MODULE_NAMES = ("pre_classifier", "classifier", "score")

_TASK_TYPES = {
    "seq_cls": "SEQ_CLS",
    "regression": "SEQ_CLS",
    "causal_lm": "CAUSAL_LM",
    "multiple_choice": None,
}


def peft_config_class(name: str) -> type:
    """The peft config dataclass behind `method.name`."""
    if name in ("moc", "control"):
        from moc_cli import MocConfig

        return MocConfig
    if name in ("lora", "dora"):
        from peft import LoraConfig

        return LoraConfig
    if name == "ia3":
        from peft import IA3Config

        return IA3Config
    if name == "molex":
        from moc_cli.baselines.molex import MolexConfig

        return MolexConfig
    raise RunSetupError(f"method.name={name!r} is not a method; choose one of {', '.join(METHODS)}")


def head_modules(model: nn.Module) -> list[str]:
    """Names of task-head modules present on `model` (classifier, score, ...)."""
    from torch import nn

    return [name for name in HEAD_MODULE_NAMES if isinstance(getattr(model, name, None), nn.Module)]


def build_peft_config(model: nn.Module, method_cfg: Any, task_kind: str) -> Any:
    """The peft config for `method_cfg` (None for `full`)."""
    fields = {k: v for k, v in as_dict(method_cfg).items() if v is not None}
    name = fields.pop("name", None)
    if name is None:
        raise RunSetupError(f"method.name is not set; choose one of {', '.join(METHODS)}")
    if name not in METHODS:
        raise RunSetupError(f"method.name={name!r} is not a method; choose one of {', '.join(METHODS)}")
    if task_kind not in _TASK_TYPES:
        raise RunSetupError(f"unknown task kind {task_kind!r}")
    if name == "full":
        if fields:
            raise RunSetupError(
                f"method.name=full takes no options, got method.{', method.'.join(sorted(fields))}; remove them"
            )
        return None

    config_cls = peft_config_class(name)
    accepted = {f.name for f in dataclasses.fields(config_cls)}
    if name == "dora":
        fields["use_dora"] = True
    if name == "control":
        fields["global_control"] = False
    unknown = sorted(set(fields) - accepted)
    if unknown:
        raise RunSetupError(
            f"method.{unknown[0]} is not an option of method.name={name} "
            f"({config_cls.__name__}); unknown: {', '.join('method.' + k for k in unknown)}"
        )

    task_type = _TASK_TYPES[task_kind]
    if "task_type" in accepted:
        fields.setdefault("task_type", task_type)
    if task_type is None and "modules_to_save" in accepted:
        # peft fills modules_to_save only for SEQ_CLS; a multiple-choice head must be listed explicitly.
        heads = head_modules(model)
        fields["modules_to_save"] = sorted(set(fields.get("modules_to_save") or []) | set(heads))
    try:
        return config_cls(**fields)
    except (TypeError, ValueError) as exc:
        raise RunSetupError(f"invalid method options for method.name={name}: {exc}") from exc


def apply_method(model: nn.Module, method_cfg: Any, task_kind: str) -> nn.Module:
    """Wrap `model` for training with the configured method; returns the (peft) model to train."""
    name = as_dict(method_cfg).get("name")
    peft_config = build_peft_config(model, method_cfg, task_kind)
    if peft_config is None:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        if "target_modules" in str(exc):
            config = getattr(model, "config", None)
            # Read it the way peft does (to_dict), which is what its default-target lookup used.
            model_type = config.to_dict().get("model_type") if hasattr(config, "to_dict") else None
            if name in ("moc", "control"):
                raise RunSetupError(
                    _moc_target_message(model, peft_config, model_type), "method.target_modules"
                ) from exc
            raise RunSetupError(
                f"method.name={name} has no default target modules for model_type={model_type!r}; "
                "set method.target_modules, e.g. method.target_modules=[q_proj,v_proj] "
                "(names of Linear layers in the model)"
            ) from exc
        raise


def _moc_target_message(model: nn.Module, peft_config: Any, model_type: str | None) -> str:
    """MoC's `target_modules` names transformer layers, not Linear modules: say so, with this model's layers."""
    from moc_cli.config.preflight import target_modules_help
    from moc_cli.tuner.architectures import ARCHITECTURES

    layers_path = peft_config.layers_pattern or (ARCHITECTURES.get(str(model_type)) or {}).get("layers")
    names: list[str] = []
    if layers_path:
        # Shown without the head class's prefix (bert.encoder.layer.0 -> encoder.layer.0): a suffix matches.
        pattern = re.compile(rf"(?:.*\.)?({re.escape(layers_path)}\.\d+)")
        for module_name, _ in model.named_modules():
            found = pattern.fullmatch(module_name)
            if found and found.group(1) not in names:
                names.append(found.group(1))
    chosen = f"method.target_modules={peft_config.target_modules!r}"
    if peft_config.layers_to_transform is not None:
        chosen += f" with method.layers_to_transform={peft_config.layers_to_transform!r}"
    return f"{chosen} selects no layer of this model. " + target_modules_help(str(model_type), names)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
