"""`method.name` -> a peft config applied to the base model (or full fine-tuning).

Baselines go through peft's own configs, so comparing MoC with LoRA is one override away
(`method.name=lora`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from moc_cli.methods import UnknownMethodError, get_method
from moc_cli.models import HEAD_MODULE_NAMES, PEFT_TASK_TYPE_BY_KIND
from moc_cli.training.errors import RunSetupError

if TYPE_CHECKING:
    from pydantic import BaseModel
    from torch import nn


def method_section(method_cfg: BaseModel | Mapping[str, Any]) -> BaseModel:
    """The validated `method` section: a run's own, or a plain dict checked by the same schema."""
    if not isinstance(method_cfg, Mapping):
        return method_cfg
    from pydantic import ValidationError

    from moc_cli.config import METHOD_MODELS

    name = method_cfg.get("name")
    try:
        get_method(name)
    except UnknownMethodError as exc:
        raise RunSetupError(str(exc), "method.name") from None
    try:
        return METHOD_MODELS[name].model_validate(dict(method_cfg))
    except ValidationError as exc:
        raise RunSetupError(_validation_message(name, exc)) from None


def _validation_message(name: str, exc: Any) -> str:
    problems = []
    for error in exc.errors():
        key = "method." + ".".join(str(part) for part in error["loc"]) if error["loc"] else "method"
        if error["type"] == "extra_forbidden":
            problems.append(f"{key} is not an option of method.name={name}")
        else:
            problems.append(f"{key}: {error['msg']}")
    return "; ".join(problems)


def head_modules(model: nn.Module) -> list[str]:
    """Names of task-head modules present on `model` (classifier, score, ...)."""
    from torch import nn

    return [name for name in HEAD_MODULE_NAMES if isinstance(getattr(model, name, None), nn.Module)]


def build_peft_config(model: nn.Module, method_cfg: BaseModel | Mapping[str, Any], task_kind: str) -> Any:
    """The peft config for the `method` section (None for `full`)."""
    section = method_section(method_cfg)
    method = get_method(section.name)
    if task_kind not in PEFT_TASK_TYPE_BY_KIND:
        raise RunSetupError(f"unknown task kind {task_kind!r}")
    if method.config_class is None:
        return None
    fields = {**section.model_dump(exclude={"name"}), **method.implied}
    config_cls = method.load_config_class()
    accepted = {f.name for f in dataclasses.fields(config_cls)}
    task_type = PEFT_TASK_TYPE_BY_KIND[task_kind]
    if "task_type" in accepted:
        fields.setdefault("task_type", task_type)
    if task_type is None and "modules_to_save" in accepted:
        # peft fills modules_to_save only for SEQ_CLS; a multiple-choice head must be listed explicitly.
        heads = head_modules(model)
        fields["modules_to_save"] = sorted(set(fields.get("modules_to_save") or []) | set(heads))
    return config_cls(**fields)  # the schema already built it once, so this does not fail


def apply_method(model: nn.Module, method_cfg: BaseModel | Mapping[str, Any], task_kind: str) -> nn.Module:
    """Wrap `model` for training with the configured method; returns the (peft) model to train."""
    section = method_section(method_cfg)
    peft_config = build_peft_config(model, section, task_kind)
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
            if get_method(section.name).moc_family:
                raise RunSetupError(
                    _moc_target_message(model, peft_config, model_type), "method.target_modules"
                ) from exc
            raise RunSetupError(
                f"method.name={section.name} has no default target modules for model_type={model_type!r}; "
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
