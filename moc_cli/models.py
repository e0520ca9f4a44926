"""Tokenizer and base model for a task kind: what training, evaluation and export all build.

The loading policy (safetensors unless `model.allow_pickle`, remote code only when asked for) is
`moc_cli.reliability.safety`'s. A model that is neither local, cached nor on a reachable Hub fails
at once with its name (`moc_cli.config.preflight.model_source_problem`), and transformers' LOAD
REPORT about the task head starting from random values, which every run expects, is not printed.

The `model:` section is read from the typed `moc_cli.config.ModelSection` or from a plain mapping
with the same keys (an export rebuilds it from a run's saved config.yaml).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from moc_cli.config import SetupError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from moc_cli.config import ModelSection
    from moc_cli.tasks.base import Task

    ModelSettings = ModelSection | Mapping[str, Any]

# The transformers auto class that gives each task kind its head.
AUTO_CLASS_BY_KIND: Mapping[str, str] = {
    "seq_cls": "AutoModelForSequenceClassification",
    "regression": "AutoModelForSequenceClassification",
    "multiple_choice": "AutoModelForMultipleChoice",
    "causal_lm": "AutoModelForCausalLM",
}
# peft's task type per task kind; multiple choice has none (its head goes in modules_to_save).
PEFT_TASK_TYPE_BY_KIND: Mapping[str, str | None] = {
    "seq_cls": "SEQ_CLS",
    "regression": "SEQ_CLS",
    "causal_lm": "CAUSAL_LM",
    "multiple_choice": None,
}
# The kind an adapter's recorded task type stands for when no task names it: the first kind listed
# for it above (SEQ_CLS: classification, not regression).
KIND_BY_PEFT_TASK_TYPE: Mapping[str, str] = {
    task_type: kind for kind, task_type in reversed(PEFT_TASK_TYPE_BY_KIND.items()) if task_type
}
# Modules of a task head; a new head starts from random values by design.
HEAD_MODULE_NAMES = ("pre_classifier", "classifier", "score")
# The config key that allows pickle weights, named in the errors that refuse them.
ALLOW_PICKLE_KEY = "model.allow_pickle"

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


class ModelSetupError(SetupError):
    """The base model or its tokenizer cannot be built as configured; exit code 2."""


def _setting(model_cfg: ModelSettings | None, key: str) -> Any:
    """One key of the `model:` section (None when absent)."""
    if model_cfg is None:
        return None
    if isinstance(model_cfg, Mapping):
        return model_cfg.get(key)
    return getattr(model_cfg, key, None)


def resolve_dtype(name: str | None) -> torch.dtype | str | None:
    """`model.dtype` as a torch dtype; `None` keeps transformers' default, `"auto"` the checkpoint's."""
    import torch

    if name is None or name == "auto":
        return name
    key = _DTYPES.get(str(name).lower())
    if key is None:
        raise ModelSetupError(
            f"model.dtype={name!r} is not a known dtype; use one of auto, float32, bfloat16, float16"
        )
    return getattr(torch, key)


def resolve_source(name_or_path: str) -> str:
    """A local folder or Hub id for `from_pretrained` (pkg:// URIs and GGUF files are converted).

    A Hub id that is neither cached nor reachable raises ModelSetupError naming it, in a few seconds
    at most (transformers would retry for about a minute, then not say which model it wanted).
    """
    from moc_cli.assets import resolve_model_source
    from moc_cli.config.preflight import model_source_problem

    if not name_or_path.lower().endswith(".gguf"):
        problem = model_source_problem(name_or_path)
        if problem is not None:
            raise ModelSetupError(problem, key="model.name_or_path")
    return resolve_model_source(name_or_path)


def build_tokenizer(source: str, model_cfg: ModelSettings | None) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token guaranteed (decoder models often ship without one)."""
    from transformers import AutoTokenizer

    from moc_cli.reliability.safety import resolve_trust_remote_code

    trust = resolve_trust_remote_code(_setting(model_cfg, "trust_remote_code"))
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        # Batched classification/LM training needs padding; the EOS (or UNK) token is the standard stand-in.
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelSetupError(
                f"the tokenizer of {source} has no pad, eos or unk token; add a pad token to the tokenizer"
            )
        tokenizer.pad_token = fallback
    return tokenizer


def auto_class_name(kind: str) -> str:
    """Name of the transformers auto class giving the head that task kind `kind` needs."""
    try:
        return AUTO_CLASS_BY_KIND[kind]
    except KeyError:
        raise ModelSetupError(
            f"task kind {kind!r} has no model head; known kinds: {', '.join(AUTO_CLASS_BY_KIND)}"
        ) from None


def auto_model_class(task: Task) -> Any:
    """The transformers auto class giving the head the task kind needs."""
    import transformers

    return getattr(transformers, auto_class_name(task.kind))


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


def _dtype_and_attention(model_cfg: ModelSettings | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    dtype = resolve_dtype(_setting(model_cfg, "dtype"))
    if dtype is not None:
        kwargs["dtype"] = dtype
    if _setting(model_cfg, "attn_implementation"):
        kwargs["attn_implementation"] = _setting(model_cfg, "attn_implementation")
    return kwargs


def model_kwargs(model_cfg: ModelSettings | None) -> dict[str, Any]:
    """`trust_remote_code`, `dtype` and `attn_implementation` from the `model:` section."""
    from moc_cli.reliability.safety import resolve_trust_remote_code

    trust = resolve_trust_remote_code(_setting(model_cfg, "trust_remote_code"))
    return {"trust_remote_code": trust, **_dtype_and_attention(model_cfg)}


class _DropLoadReport(logging.Filter):
    """Drops transformers' LOAD REPORT record; `build_model` reports what is really wrong itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def _without_load_report() -> Iterator[None]:
    logger = logging.getLogger("transformers.modeling_utils")
    dropper = _DropLoadReport()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def base_weights_missing(missing_keys: list[str]) -> list[str]:
    """Missing weights other than the task head's (a new head starts from random values by design)."""
    return [key for key in missing_keys if key.split(".", 1)[0] not in HEAD_MODULE_NAMES]


def build_model(
    source: str, task: Task, model_cfg: ModelSettings | None, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    """The base model with the head the task kind needs (sequence classification, multiple choice, LM)."""
    from moc_cli.reliability.safety import UnsafeWeightsError, check_weights_safe, from_pretrained_kwargs

    allow_pickle = bool(_setting(model_cfg, "allow_pickle"))
    opt_in = f"set {ALLOW_PICKLE_KEY}=true"
    try:
        check_weights_safe(source, allow_pickle=allow_pickle, opt_in=opt_in)
    except UnsafeWeightsError as err:
        raise ModelSetupError(str(err), key=ALLOW_PICKLE_KEY) from None
    kwargs: dict[str, Any] = {
        **from_pretrained_kwargs(_setting(model_cfg, "trust_remote_code"), allow_pickle=allow_pickle),
        **_dtype_and_attention(model_cfg),
        **head_config_kwargs(task),
    }
    try:
        with _without_load_report():
            model, info = auto_model_class(task).from_pretrained(source, output_loading_info=True, **kwargs)
    except OSError as exc:
        if "safetensors" in str(exc) and kwargs.get("use_safetensors"):
            # A Hub id (local folders were checked above) that publishes pickle weights only.
            raise ModelSetupError(
                f"{source} has no safetensors weights; convert it, or {opt_in} "
                "if you trust the pickled .bin file",
                key=ALLOW_PICKLE_KEY,
            ) from exc
        raise
    missing = base_weights_missing(list(info.get("missing_keys") or []))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        print(
            f"warning: {len(missing)} weight(s) of the base model are not in {source} and start from "
            f"random values: {shown}; check that model.name_or_path is the model you mean",
            file=sys.stderr,
            flush=True,
        )
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        # Decoder classifiers pick the last non-pad token; without pad_token_id they refuse batches > 1.
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def build_model_and_tokenizer(
    model_cfg: ModelSettings, task: Task
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(model, tokenizer, resolved source) for `model_cfg.name_or_path`."""
    name = _setting(model_cfg, "name_or_path")
    if not name:
        raise ModelSetupError(
            "model.name_or_path is not set; pass e.g. model.name_or_path=FacebookAI/roberta-base"
        )
    source = resolve_source(str(name))
    tokenizer = build_tokenizer(source, model_cfg)
    model = build_model(source, task, model_cfg, tokenizer)
    return model, tokenizer, source
