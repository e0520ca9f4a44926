"""`load_run_config`: layers -> one validated RunConfig plus per-leaf provenance.

Everything here is cheap (pyyaml, pydantic): a config is rejected before any model or dataset loads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moc_cli.config.errors import ConfigError, ConfigIssue, did_you_mean
from moc_cli.config.layering import (
    DEFAULT,
    OVERRIDE,
    Provenance,
    delete_path,
    merge_layer,
    parse_override,
    read_yaml_mapping,
    set_path,
    source_of,
)
from moc_cli.config.method_fields import METHOD_MODELS
from moc_cli.config.resources import defaults_file, find_recipe
from moc_cli.config.schema import RunConfig
from moc_cli.config.schema_info import is_known_path, suggest_key


def load_run_config(
    recipe: str | None, config_file: str | None, overrides: list[str] | None
) -> tuple[RunConfig, dict[str, str]]:
    """Resolve defaults -> recipe -> config file -> overrides; raise ConfigError listing every problem.

    Returns the validated config and, for every leaf (dotted path), where its value came from:
    `default`, `recipe:<path>`, `file:<path>` or `override`.
    """
    merged: dict[str, Any] = {}
    prov: Provenance = {}
    issues: list[ConfigIssue] = []
    layer_failed = False

    def add_layer(path: Path, label: str, source: str) -> None:
        nonlocal layer_failed
        try:
            merge_layer(merged, read_yaml_mapping(path, label), source, prov)
        except ConfigError as exc:
            issues.extend(exc.issues)
            layer_failed = True

    add_layer(defaults_file(), "defaults", DEFAULT)
    if recipe is not None:
        try:
            recipe_path = find_recipe(recipe)
        except ConfigError as exc:
            issues.extend(exc.issues)
            layer_failed = True
        else:
            source = f"recipe:{recipe_path}"
            add_layer(recipe_path, "--recipe", source)
            merged["recipe"] = recipe
            prov["recipe"] = source
    if config_file is not None:
        add_layer(Path(config_file).expanduser(), "--config", f"file:{config_file}")

    issues.extend(apply_overrides(merged, overrides or [], prov))

    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as exc:
        for err in exc.errors():
            if layer_failed and err["type"] == "missing":
                continue  # a required key most likely lives in the layer that failed to load
            issues.append(_issue_from_pydantic(err, merged, prov))
        cfg = None
    if issues:
        raise ConfigError(issues)
    assert cfg is not None
    return cfg, leaf_provenance(cfg, prov)


def apply_overrides(merged: dict[str, Any], overrides: list[str], prov: Provenance) -> list[ConfigIssue]:
    """Apply `key.path=value` / `~key.path` items in order; `method.name=` goes first (it resets method.*)."""
    parsed: list[tuple[str, str, list[str], Any]] = []
    issues: list[ConfigIssue] = []
    for item in overrides:
        try:
            action, parts, value = parse_override(item)
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        parsed.append((item, action, parts, value))
    parsed.sort(key=lambda p: p[2] != ["method", "name"])  # stable: other items keep their order
    for item, action, parts, value in parsed:
        path = ".".join(parts)
        if action == "delete":
            if not is_known_path(path):
                parent, _, leaf = path.rpartition(".")
                suggestion, note = suggest_key(parent, leaf)
                message = f"unknown key in `{item}`" + (f"; {note}" if note else "")
                issues.append(ConfigIssue(path, message, OVERRIDE, suggestion))
                continue
            delete_path(merged, parts, prov)
            continue
        try:
            set_path(merged, parts, value, OVERRIDE, prov)
        except ConfigError as exc:
            issues.extend(exc.issues)
    return issues


def _method_name(merged: dict[str, Any]) -> str | None:
    method = merged.get("method")
    return method.get("name") if isinstance(method, dict) else None


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts = list(loc)
    # A tagged union puts the tag into the location: ("method", "moc", "r") -> method.r
    if len(parts) > 1 and parts[0] == "method" and parts[1] in METHOD_MODELS:
        del parts[1]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = f"{text}.{part}" if text else str(part)
    return text


def _issue_from_pydantic(err: dict[str, Any], merged: dict[str, Any], prov: Provenance) -> ConfigIssue:
    path = _loc_to_path(err["loc"])
    dotted = re.sub(r"\[\d+\]", "", path)
    source = source_of(dotted, prov)
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent, _, leaf = dotted.rpartition(".")
        method = _method_name(merged)
        where = f" for method '{method}'" if parent == "method" and method else ""
        suggestion, note = suggest_key(parent, leaf, method)
        return ConfigIssue(path, f"unknown key{where}" + (f"; {note}" if note else ""), source, suggestion)
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        return ConfigIssue(
            path,
            f"{value!r} is not allowed; expected one of: {', '.join(allowed)}",
            source,
            did_you_mean(value, allowed) if isinstance(value, str) else None,
        )
    if kind == "union_tag_invalid":
        tags = list(METHOD_MODELS)
        return ConfigIssue(
            f"{path}.name",
            f"unknown method {ctx.get('tag')!r}; expected one of: {', '.join(tags)}",
            source_of(f"{dotted}.name", prov) or source,
            did_you_mean(str(ctx.get("tag")), tags),
        )
    if kind == "union_tag_not_found":
        return ConfigIssue(f"{path}.name", f"missing; set it to one of: {', '.join(METHOD_MODELS)}", source)
    if kind == "missing":
        return ConfigIssue(
            path, f"required key is missing; set it in a recipe, --config file or `{path}=...`"
        )
    if kind in ("model_attributes_type", "model_type", "dict_type") and not isinstance(value, dict):
        example = (
            f"method.name={value}" if dotted == "method" and isinstance(value, str) else f"{dotted}.<key>=..."
        )
        return ConfigIssue(
            path, f"expected a mapping of keys, got {value!r}; set keys below it, e.g. `{example}`", source
        )
    if kind == "value_error":
        return ConfigIssue(path, str(err["msg"]).removeprefix("Value error, "), source)
    shown = value if not isinstance(value, dict) else "a mapping"
    return ConfigIssue(path, f"{err['msg']} (got {shown!r})", source)


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _flatten(sub, f"{path}.{key}" if path else key, out)
    else:
        out[path] = value


def leaf_provenance(cfg: RunConfig, prov: Provenance) -> dict[str, str]:
    """Provenance for every leaf of the validated config; unset leaves are `default`."""
    leaves: dict[str, Any] = {}
    _flatten(cfg.model_dump(mode="json"), "", leaves)
    return {path: prov.get(path, DEFAULT) for path in leaves}
