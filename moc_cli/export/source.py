"""What an export starts from: a run directory or a bare peft adapter directory, resolved to facts.

Everything (base model, dtype, task, method) is read from the run's saved `config.yaml`, or for a
bare adapter directory from `adapter_config.json`, so export needs no training setup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moc_cli.export.errors import ExportError
from moc_cli.methods import method_of_adapter

ADAPTER_SUBDIRS = ("adapter", "final/adapter")


@dataclass
class ExportSource:
    """The resolved inputs of an export."""

    root: Path  # the run directory, or the adapter directory itself when there is no run
    adapter_dir: Path
    adapter_config: dict[str, Any]
    run_config: dict[str, Any] = field(default_factory=dict)
    eval_results: dict[str, Any] | None = None

    @property
    def is_full(self) -> bool:
        """Full fine-tuning: `adapter/` holds a complete transformers checkpoint, not a peft adapter."""
        return not self.adapter_config and (self.adapter_dir / "config.json").is_file()

    @property
    def is_run(self) -> bool:
        return bool(self.run_config)

    @property
    def model_section(self) -> dict[str, Any]:
        section = dict(self.run_config.get("model") or {})
        section.setdefault("name_or_path", self.adapter_config.get("base_model_name_or_path"))
        return section

    @property
    def base_model(self) -> str:
        name = self.model_section.get("name_or_path")
        if not name:
            raise ExportError(
                f"no base model: set model.name_or_path in {self.root / 'config.yaml'} or "
                f"base_model_name_or_path in {self.adapter_dir / 'adapter_config.json'}"
            )
        return str(name)

    @property
    def task_name(self) -> str | None:
        return (self.run_config.get("task") or {}).get("name")

    @property
    def method(self) -> str:
        """`method.name` of the run (moc, control, lora, ...), else read from the adapter config; the
        lower-cased peft type for an adapter of a method moc_cli does not know."""
        name = (self.run_config.get("method") or {}).get("name")
        if name:
            return str(name).lower()
        if self.is_full:
            return "full"
        return method_of_adapter(self.adapter_config) or self.peft_type.lower()

    @property
    def peft_type(self) -> str:
        return str(self.adapter_config.get("peft_type", "")).upper()

    def refuse_pickles(self, allow_pickle: bool) -> None:
        """Raise ExportError naming the pickle weight files export would read (the adapter's, or a
        local base's), unless the user passed --allow-pickle."""
        from moc_cli.reliability.safety import UnsafeWeightsError, check_weights_safe

        try:
            for folder in (self.adapter_dir, Path(self.base_model)):
                check_weights_safe(folder, allow_pickle)
        except UnsafeWeightsError as err:
            raise ExportError(str(err)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ExportError(f"{path} is not valid YAML ({err}); restore the run's saved config.yaml") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path} must hold a mapping (the resolved run config), got {type(data).__name__}")
    return data


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path} must hold a JSON object")
    return data


def _find_run_root(adapter_dir: Path) -> Path | None:
    """The run directory holding `adapter_dir` (adapter/, final/adapter/, checkpoints/checkpoint-N/)."""
    for parent in list(adapter_dir.parents)[:3]:
        if (parent / "config.yaml").is_file():
            return parent
    return None


def resolve_source(path: str | Path) -> ExportSource:
    """Resolve a run directory, an adapter directory inside a run, or a bare adapter directory."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ExportError(
            f"{path} is not a directory; pass a run directory (with config.yaml) or an adapter directory"
        )
    if (path / "adapter_config.json").is_file():
        adapter_dir = path
        root = _find_run_root(path)
    elif (path / "config.yaml").is_file():
        root = path
        adapter_dir = next(
            (path / sub for sub in ADAPTER_SUBDIRS if (path / sub / "adapter_config.json").is_file()), None
        )
        method = str((_read_yaml(path / "config.yaml").get("method") or {}).get("name", "")).lower()
        if adapter_dir is None and method == "full" and (path / "adapter" / "config.json").is_file():
            adapter_dir = path / "adapter"  # full fine-tuning saves the whole model there
        if adapter_dir is None:
            raise ExportError(
                f"run directory {path} has no adapter (looked for {', '.join(s + '/adapter_config.json' for s in ADAPTER_SUBDIRS)}); "
                "finish or resume the run first (moc train --resume auto)"
            )
    else:
        raise ExportError(
            f"{path} has neither config.yaml (a run directory) nor adapter_config.json (an adapter directory)"
        )
    adapter_file = adapter_dir / "adapter_config.json"
    adapter_config = _read_json(adapter_file) if adapter_file.is_file() else {}
    run_config = _read_yaml(root / "config.yaml") if root is not None else {}
    results_file = (root / "eval" / "results.json") if root is not None else None
    eval_results = _read_json(results_file) if results_file is not None and results_file.is_file() else None
    return ExportSource(
        root=root or adapter_dir,
        adapter_dir=adapter_dir,
        adapter_config=adapter_config,
        run_config=run_config,
        eval_results=eval_results,
    )
