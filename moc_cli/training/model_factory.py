"""Tokenizer and base model for a task kind, loaded offline-safe and from safetensors by default.

The loading policy (safetensors unless `model.allow_pickle`, remote code only when asked for) is
`moc_cli.reliability.safety`'s. A model that is neither local, cached nor on a reachable Hub fails
at once with its name (`moc_cli.config.preflight.model_source_problem`), and transformers' LOAD
REPORT about the task head starting from random values, which every run expects, is not printed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.training._sections import as_dict
from moc_cli.training.errors import RunSetupError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from moc_cli.tasks.base import Task

# The config key that allows pickle weights, named in the errors that refuse them.
ALLOW_PICKLE_KEY = "model.allow_pickle=true"

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
    """A local folder or Hub id for `from_pretrained` (pkg:// URIs and GGUF files are converted).

    A Hub id that is neither cached nor reachable raises RunSetupError naming it, in a few seconds
    at most (transformers would retry for about a minute, then not say which model it wanted).
    """
    from moc_cli.assets import resolve_model_source
    from moc_cli.config.preflight import model_source_problem

    if not name_or_path.lower().endswith(".gguf"):
        problem = model_source_problem(name_or_path)
        if problem is not None:
            raise RunSetupError(problem, key="model.name_or_path")
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
    from moc_cli.reliability.safety import resolve_trust_remote_code

    cfg = as_dict(model_cfg)
    kwargs: dict[str, Any] = {"trust_remote_code": resolve_trust_remote_code(cfg.get("trust_remote_code"))}
    dtype = resolve_dtype(cfg.get("dtype"))
    if dtype is not None:
        kwargs["dtype"] = dtype
    if cfg.get("attn_implementation"):
        kwargs["attn_implementation"] = cfg["attn_implementation"]
    return kwargs


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
    from moc_cli.training.methods import HEAD_MODULE_NAMES

    return [key for key in missing_keys if key.split(".", 1)[0] not in HEAD_MODULE_NAMES]


def build_model(
    source: str, task: Task, model_cfg: Any, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    """The base model with the head the task kind needs (sequence classification, multiple choice, LM)."""
    from moc_cli.reliability.safety import from_pretrained_kwargs, pickle_weight_files

    cfg = as_dict(model_cfg)
    allow_pickle = bool(cfg.get("allow_pickle"))
    local = Path(source)
    if not allow_pickle and local.is_dir() and not any(local.glob("*.safetensors")):
        pickles = pickle_weight_files(local)
        if pickles:
            raise RunSetupError(
                f"{source} has no safetensors weights, only pickle files ({', '.join(p.name for p in pickles)}), "
                "which can run arbitrary code when loaded; convert them (model.save_pretrained(dir) writes "
                f"model.safetensors), or set {ALLOW_PICKLE_KEY} if you trust them",
                key="model.allow_pickle",
            )
    kwargs: dict[str, Any] = {
        **model_kwargs(cfg),
        **head_config_kwargs(task),
        # Pickled .bin weights can execute code on load: safetensors only unless explicitly allowed
        # (allowing them still prefers safetensors when both are present).
        **{
            k: v
            for k, v in from_pretrained_kwargs(allow_pickle=allow_pickle).items()
            if k != "trust_remote_code"
        },
    }
    try:
        with _without_load_report():
            model, info = auto_model_class(task).from_pretrained(source, output_loading_info=True, **kwargs)
    except OSError as exc:
        if "safetensors" in str(exc) and kwargs.get("use_safetensors"):
            raise RunSetupError(
                f"{source} has no safetensors weights; convert it, or set {ALLOW_PICKLE_KEY} "
                "if you trust the pickled .bin file",
                key="model.allow_pickle",
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
