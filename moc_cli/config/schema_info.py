"""Introspection of the schema: field listings for `moc schema` and key names for suggestions."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from moc_cli.config.schema import METHOD_MODELS, RunConfig


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
