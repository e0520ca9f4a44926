"""Introspection of the schema: field listings for `moc schema` and key names for suggestions."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from moc_cli.config.method_fields import METHOD_MODELS
from moc_cli.config.schema import RunConfig


@dataclass(frozen=True)
class FieldDoc:
    path: str
    type: str
    default: str
    help: str
    method: str | None = None  # for method.* fields: the method that has the field

    @property
    def label(self) -> str:
        return f"{self.path} [{self.method}]" if self.method else self.path


def format_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(format_type(a) for a in args)
    if origin is typing.Annotated:
        return format_type(args[0])
    if origin is not None:
        inner = ", ".join(format_type(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return "null" if value is None else repr(value)


def _section_type(info: FieldInfo) -> type[BaseModel] | None:
    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _walk(model: type[BaseModel], prefix: str, method: str | None, out: list[FieldDoc]) -> None:
    items = list(model.model_fields.items())
    if method is not None:  # show the discriminator first
        items.sort(key=lambda kv: kv[0] != "name")
    for name, info in items:
        path = f"{prefix}.{name}" if prefix else name
        if path == "method":
            out.append(FieldDoc("method", "section", "moc", info.description or "", None))
            for method_name, method_model in METHOD_MODELS.items():
                _walk(method_model, "method", method_name, out)
            continue
        sub = _section_type(info)
        if sub is not None:
            out.append(FieldDoc(path, "section", "", info.description or "", method))
            _walk(sub, path, method, out)
        else:
            out.append(
                FieldDoc(
                    path, format_type(info.annotation), _default_text(info), info.description or "", method
                )
            )


def all_fields() -> list[FieldDoc]:
    """Every field of the schema in declaration order; method fields once per method."""
    out: list[FieldDoc] = []
    _walk(RunConfig, "", None, out)
    return out


def keys_at(parent: str, method: str | None = None) -> list[str]:
    """Valid key names directly below `parent` ('' for the top level)."""
    names: list[str] = []
    for doc in all_fields():
        head, _, leaf = doc.path.rpartition(".")
        if head != parent:
            continue
        if parent.startswith("method") and method in METHOD_MODELS and doc.method not in (None, method):
            continue
        if leaf not in names:
            names.append(leaf)
    return names


def is_known_path(path: str) -> bool:
    """True when some method variant of the schema has `path` (or `path` lies inside a dict field)."""
    docs = all_fields()
    known = {d.path for d in docs}
    if path in known:
        return True
    dict_fields = {d.path for d in docs if d.type.startswith("dict")}
    return any(path.startswith(f + ".") for f in dict_fields)


# Names other tools (peft, TRL, axolotl, argparse scripts) use for a key this schema spells differently;
# string similarity alone misses them (`rank` is far from `r`).
KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "rank": ("r",),
    "lora_r": ("r",),
    "lora_rank": ("r",),
    "control_rank": ("r",),
    "lr": ("learning_rate",),
    "epochs": ("num_train_epochs",),
    "num_epochs": ("num_train_epochs",),
    "steps": ("max_steps",),
    "batch_size": ("per_device_train_batch_size",),
    "train_batch_size": ("per_device_train_batch_size",),
    "micro_batch_size": ("per_device_train_batch_size",),
    "eval_batch_size": ("per_device_eval_batch_size",),
    "grad_accum": ("gradient_accumulation_steps",),
    "gradient_accumulation": ("gradient_accumulation_steps",),
    "warmup_ratio": ("warmup_steps",),
    "evaluation_strategy": ("eval_strategy",),
    "scheduler": ("lr_scheduler_type",),
    "optimizer": ("optim",),
    "max_seq_length": ("max_length",),
    "max_seq_len": ("max_length",),
    "sequence_len": ("max_length",),
    "model_name": ("name_or_path",),
    "model_name_or_path": ("name_or_path",),
    "base_model": ("name_or_path",),
    "torch_dtype": ("dtype",),
    "output_dir": ("dir",),
    "dropout": ("control_dropout", "lora_dropout"),
    "experts": ("top_k",),
}


def suggest_key(parent: str, leaf: str, method: str | None = None) -> tuple[str | None, str | None]:
    """(suggestion, note) for the unknown key `leaf` under `parent` ('' = top level).

    In order: a known alias in the same section (`method.rank` -> `r`), a close name in the same
    section, then the same or a close name in another section, given as its full dotted path
    (`training.seed` -> `seed`, `model.max_length` -> `task.max_length`) with a note saying where
    it lives.
    """
    from moc_cli.config.errors import did_you_mean

    here = keys_at(parent, method)
    for alias in KEY_ALIASES.get(leaf.lower(), ()):
        if alias in here:
            return alias, None
    elsewhere: dict[str, str] = {}  # leaf -> full path, for the keys of every other section
    for doc in all_fields():
        head, _, name = doc.path.rpartition(".")
        if doc.type == "section" or head == parent or "." in head:  # same section, or deeper
            continue
        elsewhere.setdefault(name, doc.path)
    # The exact name elsewhere beats a near name here: `training.seed` means the top-level seed.
    candidates = [leaf] if leaf in elsewhere else []
    candidates += [a for a in KEY_ALIASES.get(leaf.lower(), ()) if a in elsewhere]
    if not candidates:
        close = did_you_mean(leaf, here)
        if close is not None:
            return close, None
    name = candidates[0] if candidates else did_you_mean(leaf, elsewhere)
    if name is None:
        return None, None
    path = elsewhere[name]
    home = path.rpartition(".")[0]
    if not home:
        return path, f"{name} is a top-level key, not part of {parent}"
    return path, f"{name} belongs to {home}, not {parent or 'the top level'}"
