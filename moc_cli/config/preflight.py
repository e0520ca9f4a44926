"""Cheap checks beyond the schema: the task exists, its options are known, local paths exist.

Runs before any model or dataset loads (no torch, transformers or datasets import); Hub ids are
not checked because that would need the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from moc_cli.config.errors import ConfigIssue, did_you_mean
from moc_cli.config.schema import RunConfig


def _looks_local(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or Path(value).expanduser().exists()


def _check_task(cfg: RunConfig, provenance: dict[str, str]) -> list[ConfigIssue]:
    from moc_cli.tasks.registry import get_task_class, list_tasks

    source = provenance.get("task.name")
    try:
        known = list_tasks()
    except ImportError as exc:  # a task module failed to import: a broken install, not a config error
        return [ConfigIssue("task.name", f"cannot load the task registry: {exc}", source)]
    if cfg.task.name not in known:
        return [
            ConfigIssue(
                "task.name",
                f"unknown task {cfg.task.name!r}; `moc ls` shows the recipes, known tasks: {', '.join(known)}",
                source,
                did_you_mean(cfg.task.name, known),
            )
        ]
    accepted = dict(getattr(get_task_class(cfg.task.name), "option_defaults", {}) or {})
    issues = []
    for key in cfg.task.options:
        if key not in accepted:
            names = ", ".join(sorted(accepted)) or "none"
            issues.append(
                ConfigIssue(
                    f"task.options.{key}",
                    f"unknown option for task {cfg.task.name!r}; accepted options: {names}",
                    provenance.get(f"task.options.{key}"),
                    did_you_mean(key, accepted),
                )
            )
    return issues


def _resolve_pkg(key: str, uri: str, source: str | None) -> tuple[Path | None, list[ConfigIssue]]:
    from moc_cli.assets.errors import AssetError
    from moc_cli.assets.pkg_uri import resolve_pkg_uri

    try:
        return resolve_pkg_uri(uri), []
    except (AssetError, ValueError) as exc:
        return None, [ConfigIssue(key, str(exc), source)]


def _check_model(cfg: RunConfig, provenance: dict[str, str]) -> list[ConfigIssue]:
    value = cfg.model.name_or_path
    source = provenance.get("model.name_or_path")
    if value.startswith("pkg://"):
        path, issues = _resolve_pkg("model.name_or_path", value, source)
        if path is None:
            return issues
    elif not _looks_local(value):
        return []  # a Hub id: checked when loading (offline mode fails fast there)
    else:
        path = Path(value).expanduser()
    if not path.exists():
        return [ConfigIssue("model.name_or_path", f"local model path does not exist: {value}", source)]
    if path.is_file():
        if path.suffix == ".gguf":
            return []
        return [
            ConfigIssue(
                "model.name_or_path", f"expected a model directory or a .gguf file, got {path}", source
            )
        ]
    if not (path / "config.json").is_file():
        return [
            ConfigIssue(
                "model.name_or_path",
                f"{path} has no config.json; point to a directory written by save_pretrained",
                source,
            )
        ]
    return []


def _check_data(cfg: RunConfig, provenance: dict[str, str]) -> list[ConfigIssue]:
    entries: list[tuple[str, str]] = []
    if cfg.data.path:
        entries.append(("data.path", cfg.data.path))
    entries += [(f"data.files.{split}", file) for split, file in (cfg.data.files or {}).items()]
    issues: list[ConfigIssue] = []
    for key, value in entries:
        if value.startswith("pkg://"):
            issues += _resolve_pkg(key, value, provenance.get(key))[1]
        elif (key != "data.path" or _looks_local(value)) and not Path(value).expanduser().exists():
            issues.append(ConfigIssue(key, f"no such file or directory: {value}", provenance.get(key)))
    return issues


def check_output_dir(cfg: RunConfig, provenance: dict[str, str]) -> list[ConfigIssue]:
    """The run folder (or, when it does not exist yet, the folder it would be created in) is writable.

    Without this, an unwritable output.dir surfaces only after the model has loaded, as a bare
    PermissionError. A recipe's or the default folder is the parent of timestamped runs: same check.
    """
    target = Path(cfg.output.dir or "runs").expanduser()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    source = provenance.get("output.dir")
    if not probe.is_dir():
        return [
            ConfigIssue("output.dir", f"{probe} is a file, not a folder; choose another output.dir", source)
        ]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [
            ConfigIssue(
                "output.dir",
                f"cannot write to {probe} (permission denied or read-only file system); "
                "choose a writable folder with --output-dir DIR or fix its permissions",
                source,
            )
        ]
    return []


def preflight(cfg: RunConfig, provenance: dict[str, str]) -> list[ConfigIssue]:
    """Every problem found by the cheap checks (empty when the run can start)."""
    return (
        _check_task(cfg, provenance)
        + _check_model(cfg, provenance)
        + _check_data(cfg, provenance)
        + check_output_dir(cfg, provenance)
    )
