"""Resolved config as YAML with a `# from <source>` comment on every value."""

from __future__ import annotations

import json
from typing import Any

import yaml

from moc_cli.config.schema import RunConfig


def _scalar(value: Any) -> str:
    """One-line YAML for a scalar or a list (flow style), as safe_load would read it back."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    text = text.removesuffix("...").strip()
    if "\n" in text:
        # multi-line strings: a JSON string is a valid one-line YAML double-quoted scalar
        return json.dumps(value, ensure_ascii=False)
    return text


def _ordered(path: str, mapping: dict[str, Any]) -> list[tuple[str, Any]]:
    items = list(mapping.items())
    if path == "method":
        items.sort(key=lambda kv: kv[0] != "name")
    return items


def render_config(cfg: RunConfig, provenance: dict[str, str]) -> str:
    """YAML that `yaml.safe_load` reads back to `cfg.model_dump(mode="json")`, with provenance comments."""
    rows: list[tuple[str, str | None]] = []  # (text, comment)

    def walk(mapping: dict[str, Any], path: str, indent: int) -> None:
        for key, value in _ordered(path, mapping):
            sub = f"{path}.{key}" if path else key
            pad = "  " * indent
            if isinstance(value, dict) and value:
                rows.append((f"{pad}{key}:", None))
                walk(value, sub, indent + 1)
            else:
                rows.append((f"{pad}{key}: {_scalar(value)}", provenance.get(sub, "default")))

    walk(cfg.model_dump(mode="json"), "", 0)
    # Align comments in one column, except that a few long values (descriptions, paths) do not push
    # it far to the right: they get their comment two spaces after the value.
    lengths = sorted(len(text) for text, comment in rows if comment)
    width = (lengths[int(0.9 * (len(lengths) - 1))] if lengths else 0) + 2
    lines = [
        text
        if comment is None
        else f"{text.ljust(width)}# from {comment}"
        if len(text) < width
        else f"{text}  # from {comment}"
        for text, comment in rows
    ]
    return "\n".join(lines) + "\n"


def dump_config(cfg: RunConfig) -> str:
    """Plain YAML of the resolved config (what a run dir's config.yaml holds)."""
    data = cfg.model_dump(mode="json")
    if isinstance(data.get("method"), dict):
        data["method"] = dict(_ordered("method", data["method"]))
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
