"""Rebuild the fine-tuned PEFT model of a run, and unwrap it into a plain module for export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.export.errors import ExportError
from moc_cli.export.source import ExportSource

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class TaskInfo:
    """The part of a `Task` that model construction needs (stands in when no task is registered)."""

    name: str
    kind: str
    label_names: list[str] | None = None
    num_labels: int = 0


def _head_rows(source: ExportSource) -> int | None:
    """Number of outputs of the trained classification head saved with the adapter, if any."""
    from safetensors import safe_open

    weights = source.adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    heads = source.adapter_config.get("modules_to_save") or ["classifier", "score"]
    rows: list[int] = []
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            parts = key.split(".")
            if key.endswith(".weight") and any(h in parts for h in heads):
                shape = handle.get_slice(key).get_shape()
                if len(shape) == 2:
                    rows.append(int(shape[0]))
    return min(rows) if rows else None


def task_info(source: ExportSource) -> TaskInfo:
    """Task kind and labels: from the task registry when the run names a task, else from the adapter."""
    name = source.task_name
    if name:
        from moc_cli.tasks.registry import get_task

        try:
            task = get_task(name)
        except (KeyError, ValueError, ImportError):
            # Unknown here (e.g. a task from a plugin not installed): fall back to the adapter.
            task = None
        if task is not None:
            return TaskInfo(task.name, task.kind, list(task.label_names or []) or None, task.num_labels)
    from moc_cli.models import KIND_BY_PEFT_TASK_TYPE

    task_type = str(source.adapter_config.get("task_type") or "").upper()
    kind = KIND_BY_PEFT_TASK_TYPE.get(task_type)
    if kind is None:
        raise ExportError(
            f"cannot tell the task kind: {source.adapter_dir / 'adapter_config.json'} has task_type="
            f"{task_type or None!r} and no run config.yaml names a registered task; "
            "export from the run directory, or set task_type to SEQ_CLS or CAUSAL_LM"
        )
    rows = _head_rows(source) if kind == "seq_cls" else None
    if kind == "seq_cls" and rows is None:
        raise ExportError(
            f"{source.adapter_dir} holds no trained classification head (modules_to_save), so the number "
            "of labels is unknown; export from the run directory that produced it"
        )
    return TaskInfo(name or f"adapter/{kind}", kind, None, rows or 0)


def build_tokenizer_and_base(
    source: ExportSource, allow_pickle: bool, dtype: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, TaskInfo]:
    """The base model with its task head, built the way the training runner built it."""
    from moc_cli.models import build_model, build_tokenizer, resolve_source

    info = task_info(source)
    model_cfg = dict(source.model_section)
    if dtype is not None:
        model_cfg["dtype"] = dtype
    # --allow-pickle relaxes the base's loading only where a local base has nothing but pickles (a
    # Hub base stays safetensors-only); an allowed pickle adapter is read by peft itself.
    try:
        base = resolve_source(source.base_model)
    except ImportError as err:  # AssetNotInstalledError carries the pip command
        raise ExportError(str(err)) from None
    tokenizer_source = base
    if source.is_full:
        # Full fine-tuning: the trained checkpoint replaces the base (and may carry its tokenizer).
        base = str(source.adapter_dir)
        if (source.adapter_dir / "tokenizer_config.json").is_file():
            tokenizer_source = base
    base_dir = Path(base)
    model_cfg["allow_pickle"] = allow_pickle and base_dir.is_dir() and not any(base_dir.glob("*.safetensors"))
    tokenizer = build_tokenizer(tokenizer_source, model_cfg)
    model = build_model(base, info, model_cfg, tokenizer)  # type: ignore[arg-type]
    return model, tokenizer, info


def load_peft_model(
    source: ExportSource, allow_pickle: bool = False, dtype: str | None = None
) -> tuple[Any, PreTrainedTokenizerBase, TaskInfo]:
    """(PeftModel in eval mode, tokenizer, task info) exactly as training left it.

    For full fine-tuning the trained transformers model itself is returned. `dtype` overrides the
    run's `model.dtype` (ONNX graphs are exported in float32).
    """
    from peft import PeftModel

    model, tokenizer, info = build_tokenizer_and_base(source, allow_pickle, dtype)
    if source.is_full:
        model.eval()
        return model, tokenizer, info
    from moc_cli.reliability.compat import AdapterMismatchError, check_adapter_compatible

    # Fail before peft touches the base: a mismatched adapter would load silently-wrong weights.
    if (source.adapter_dir / "adapter_model.safetensors").is_file():  # pickled adapters: peft checks on load
        try:
            check_adapter_compatible(source.adapter_dir, model)
        except AdapterMismatchError as err:
            raise ExportError(str(err)) from None
    peft_model = PeftModel.from_pretrained(model, str(source.adapter_dir), is_trainable=False)
    peft_model.eval()
    return peft_model, tokenizer, info


def unwrap(peft_model: Any) -> nn.Module:
    """The transformers model with the adapter modules in place and no peft wrapper around it.

    Trained heads (`modules_to_save`) are swapped in for their wrappers so the state-dict keys are the
    plain transformers ones. State the tuner keeps beside the model (MoC's shared expert pools and
    routers, `moc_state`) is attached to the model as a submodule of the same name: the layers and
    hooks reach it by reference, and this way it is saved and loaded with the model.
    """
    from peft import PeftModel
    from peft.utils.other import ModulesToSaveWrapper

    if not isinstance(peft_model, PeftModel):
        return peft_model
    tuner = peft_model.base_model
    adapter = peft_model.active_adapter
    inner = tuner.model
    for name, module in list(inner.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            parent = inner.get_submodule(parent_name) if parent_name else inner
            setattr(parent, child, module.modules_to_save[adapter])
    for name, child in tuner.named_children():
        if (
            child is inner
            or not any(True for _ in child.parameters())
            and not any(True for _ in child.buffers())
        ):
            continue
        if hasattr(inner, name):
            # Cannot attach without shadowing a model attribute: keep the tuner (it forwards to the model).
            return tuner
        inner.add_module(name, child)
    return inner


def stripped_peft_config(adapter_config: dict[str, Any]) -> Any:
    """The adapter's peft config for re-injection into a bare model (heads are plain weights there)."""
    from peft.config import PeftConfigMixin

    fields = dict(adapter_config)
    fields["modules_to_save"] = None
    fields["task_type"] = None
    fields["inference_mode"] = True
    try:
        return PeftConfigMixin.from_peft_type(**fields)
    except (KeyError, TypeError, ValueError) as err:
        raise ExportError(
            f"cannot rebuild the {fields.get('peft_type')} adapter config ({err}); "
            "is the moc_cli version that trained it installed?"
        ) from None


def rebuild_unwrapped(model: nn.Module, adapter_config: dict[str, Any]) -> nn.Module:
    """Inject freshly initialised adapter modules into `model` and unwrap (weights are loaded after)."""
    from peft import get_peft_model

    config = stripped_peft_config(adapter_config)
    config.base_model_name_or_path = getattr(model, "name_or_path", None)
    peft_model = get_peft_model(model, config)
    return unwrap(peft_model)
