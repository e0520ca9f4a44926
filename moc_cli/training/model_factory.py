"""Tokenizer and base model for a task kind, loaded offline-safe and from safetensors by default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moc_cli.training._sections import as_dict
from moc_cli.training.errors import RunSetupError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from moc_cli.tasks.base import Task

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def resolve_dtype(name: str | None) -> torch.dtype | str | None:
    """`model.dtype` as a torch dtype; `None` keeps transformers' default, `"auto"` the checkpoint's."""
    import torch

    if name is None or name == "auto":
        return name
    key = _DTYPES.get(str(name).lower())
    if key is None:
        raise RunSetupError(
            f"model.dtype={name!r} is not a known dtype; use one of auto, float32, bfloat16, float16"
        )
    return getattr(torch, key)


def resolve_source(name_or_path: str) -> str:
    """A local folder or Hub id for `from_pretrained` (pkg:// URIs and GGUF files are converted)."""
    from moc_cli.assets import resolve_model_source

    return resolve_model_source(name_or_path)


def build_tokenizer(source: str, model_cfg: Any) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token guaranteed (decoder models often ship without one)."""
    from transformers import AutoTokenizer

    cfg = as_dict(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=bool(cfg.get("trust_remote_code")))
    if tokenizer.pad_token is None:
        # Batched classification/LM training needs padding; the EOS (or UNK) token is the standard stand-in.
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise RunSetupError(
                f"the tokenizer of {source} has no pad, eos or unk token; add a pad token to the tokenizer"
            )
        tokenizer.pad_token = fallback
    return tokenizer


def auto_model_class(task: Task) -> Any:
    """The transformers auto class giving the head the task kind needs."""
    import transformers

    if task.kind in ("seq_cls", "regression"):
        return transformers.AutoModelForSequenceClassification
    if task.kind == "multiple_choice":
        return transformers.AutoModelForMultipleChoice
    if task.kind == "causal_lm":
        return transformers.AutoModelForCausalLM
    raise RunSetupError(f"task {task.name} has unknown kind {task.kind!r}")


def head_config_kwargs(task: Task) -> dict[str, Any]:
    """Config fields the task's head needs (labels and problem type of classifiers)."""
    if task.kind == "regression":
        return {"num_labels": task.num_labels, "problem_type": "regression"}
    if task.kind != "seq_cls":
        return {}
    kwargs: dict[str, Any] = {"num_labels": task.num_labels, "problem_type": "single_label_classification"}
    if task.label_names:
        kwargs["id2label"] = dict(enumerate(task.label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(task.label_names)}
    return kwargs


def model_kwargs(model_cfg: Any) -> dict[str, Any]:
    """`trust_remote_code`, `dtype` and `attn_implementation` from the `model:` section."""
    cfg = as_dict(model_cfg)
    kwargs: dict[str, Any] = {"trust_remote_code": bool(cfg.get("trust_remote_code"))}
    dtype = resolve_dtype(cfg.get("dtype"))
    if dtype is not None:
        kwargs["dtype"] = dtype
    if cfg.get("attn_implementation"):
        kwargs["attn_implementation"] = cfg["attn_implementation"]
    return kwargs


def build_model(
    source: str, task: Task, model_cfg: Any, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    """The base model with the head the task kind needs (sequence classification, multiple choice, LM)."""
    cfg = as_dict(model_cfg)
    kwargs: dict[str, Any] = {
        **model_kwargs(cfg),
        **head_config_kwargs(task),
        # Pickled .bin weights can execute code on load; safetensors only unless explicitly allowed.
        # allow_pickle widens the choice (safetensors still preferred when present), it never forbids safetensors.
        "use_safetensors": None if cfg.get("allow_pickle") else True,
    }
    try:
        model = auto_model_class(task).from_pretrained(source, **kwargs)
    except OSError as exc:
        if "safetensors" in str(exc) and kwargs["use_safetensors"]:
            raise RunSetupError(
                f"{source} has no safetensors weights; convert it, or set model.allow_pickle=true "
                "if you trust the pickled .bin file"
            ) from exc
        raise
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        # Decoder classifiers pick the last non-pad token; without pad_token_id they refuse batches > 1.
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def build_model_and_tokenizer(
    model_cfg: Any, task: Task
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(model, tokenizer, resolved source) for `model_cfg.name_or_path`."""
    cfg = as_dict(model_cfg)
    name = cfg.get("name_or_path")
    if not name:
        raise RunSetupError(
            "model.name_or_path is not set; pass e.g. model.name_or_path=FacebookAI/roberta-base"
        )
    source = resolve_source(str(name))
    tokenizer = build_tokenizer(source, cfg)
    model = build_model(source, task, cfg, tokenizer)
    return model, tokenizer, source
