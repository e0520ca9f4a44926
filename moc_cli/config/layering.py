"""Merging config layers into one plain dict while recording where every leaf came from.

Order: defaults -> recipe -> --config file -> `key.path=value` overrides; later layers win.
Mappings merge key by key; scalars and lists replace. A layer that switches `method.name` replaces
the whole `method` section, because each method has its own fields.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from moc_cli.config.errors import ConfigError, ConfigIssue

Provenance = dict[str, str]
DEFAULT = "default"
OVERRIDE = "override"
_SECTIONS = ("model", "task", "data", "method", "training", "output")
# YAML 1.1 (pyyaml) reads `3e-4` as a string; on the command line it is meant as a number.
_EXP_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def read_yaml_mapping(path: Path, label: str) -> dict[str, Any]:
    """Load a YAML file that must hold a mapping (an empty file is an empty mapping)."""
    if not path.is_file():
        raise ConfigError(ConfigIssue(label, f"file not found: {path}"))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        pos = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(ConfigIssue(label, f"invalid YAML in {path}{pos}: {problem}")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            ConfigIssue(label, f"{path} must hold a mapping of keys, not a {type(data).__name__}")
        )
    return data


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def forget(prov: Provenance, path: str) -> None:
    """Drop the provenance of `path` and everything below it."""
    for key in [k for k in prov if k == path or k.startswith(path + ".")]:
        del prov[key]


def record(value: Any, path: str, source: str, prov: Provenance) -> None:
    """Record `source` for every leaf of `value` (non-empty mappings are walked, lists are leaves)."""
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            record(sub, _join(path, key), source, prov)
    else:
        prov[path] = source


def _switches_method(base: dict[str, Any], key: str, value: Any, prefix: str) -> bool:
    if prefix or key != "method" or not isinstance(value, dict) or "name" not in value:
        return False
    current = base.get("method")
    return not isinstance(current, dict) or current.get("name") != value["name"]


def merge_layer(
    base: dict[str, Any], layer: dict[str, Any], source: str, prov: Provenance, prefix: str = ""
) -> None:
    """Merge `layer` into `base` in place."""
    for key, value in layer.items():
        path = _join(prefix, key)
        if value is None and not prefix and key in _SECTIONS:
            continue  # `data:` with only comments below it parses as null: nothing to merge
        if (
            isinstance(value, dict)
            and isinstance(base.get(key), dict)
            and not _switches_method(base, key, value, prefix)
        ):
            merge_layer(base[key], value, source, prov, path)
            continue
        forget(prov, path)
        base[key] = copy.deepcopy(value)
        record(value, path, source, prov)


def parse_override(item: str) -> tuple[str, list[str], Any]:
    """`a.b=value` -> ("set", ["a", "b"], yaml-typed value); `~a.b` -> ("delete", ["a", "b"], None)."""
    if item.startswith("~"):
        key, value, action = item[1:], None, "delete"
        if "=" in key:
            raise ConfigError(ConfigIssue(item, "a deletion takes no value: write `~key.path`"))
    else:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(
                ConfigIssue(item, "override must look like key.path=value (or ~key.path to reset a key)")
            )
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw  # e.g. an unbalanced bracket: keep the text, the schema judges it
        if isinstance(value, str) and _EXP_FLOAT.match(raw.strip()):
            value = float(value)
        action = "set"
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(ConfigIssue(item, "empty key in override; expected key.path=value"))
    return action, parts, value


def set_path(base: dict[str, Any], parts: list[str], value: Any, source: str, prov: Provenance) -> None:
    node = base
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise ConfigError(
                ConfigIssue(
                    ".".join(parts), f"cannot set a key below {prefix}, which holds {child!r}", source
                )
            )
        node = child
    path = ".".join(parts)
    if parts == ["method", "name"] and node.get("name") != value:
        node.clear()  # a different method: fields of the previous one no longer apply
        forget(prov, "method")
    forget(prov, path)
    node[parts[-1]] = copy.deepcopy(value)
    record(value, path, source, prov)


def delete_path(base: dict[str, Any], parts: list[str], prov: Provenance) -> None:
    """Remove a key so that the schema default applies again (a no-op when it was not set)."""
    node: Any = base
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)
    forget(prov, ".".join(parts))


def _rank(source: str) -> int:
    return {"default": 0, "recipe": 1, "file": 2, "override": 3}.get(source.partition(":")[0], 0)


def source_of(path: str, prov: Provenance) -> str | None:
    """The recorded source of `path` or its nearest recorded ancestor; for a section, the latest
    layer that set anything inside it (a cross-field check is most likely broken by that layer)."""
    probe = path
    while probe:
        if probe in prov:
            return prov[probe]
        probe = probe.rpartition(".")[0]
    below = [prov[k] for k in prov if k.startswith(path + ".")]
    return max(below, key=_rank) if below else None
