"""Task registry: `get_task("glue/sst2")`, `list_tasks()`.

Task modules are imported lazily, on the first lookup, from an explicit list (no entry points, no
scanning), so `import moc_cli.tasks` stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any, TypeVar

from moc_cli.tasks.base import Task

TASK_MODULES: tuple[str, ...] = ("glue", "superglue", "instruct", "commonsense", "demo", "chat")

_REGISTRY: dict[str, type[Task]] = {}
_loaded = False

T = TypeVar("T", bound=type[Task])


class UnknownTaskError(KeyError):
    """An unknown task name; the message lists the known names and the closest matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def register_task(cls: T) -> T:
    """Class decorator: register a concrete Task subclass under `cls.name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or "/" not in name:
        raise ValueError(f"{cls.__qualname__}: Task.name must be '<suite>/<task>', got {name!r}")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"task {name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
        )
    _REGISTRY[name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for module in TASK_MODULES:
        importlib.import_module(f"moc_cli.tasks.{module}")
    _loaded = True


def list_tasks() -> list[str]:
    """All registered task names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get_task_class(name: str) -> type[Task]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise UnknownTaskError(
            f"unknown task {name!r}{hint}. Known tasks: {', '.join(sorted(_REGISTRY))}"
        ) from None


def get_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """A configured task instance; `options` are the task's extra config keys (e.g. packing)."""
    return get_task_class(name)(**dict(options or {}))
