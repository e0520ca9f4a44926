"""Helpers for CLI tests (a module with a unique name so tests can import it)."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from moc_cli.cli.app import app

TINY_RECIPE = {
    "description": "Tiny test recipe for SST-2.",
    "model": {"name_or_path": "FacebookAI/roberta-base"},
    "task": {"name": "glue/sst2", "max_length": 64},
    "method": {"name": "moc", "r": 8},
    "training": {"learning_rate": 1.0e-3, "max_steps": 10},
}


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def invoke(*args: str):
    """Run `moc ARGS` in-process; wide columns keep Rich help boxes from wrapping examples."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
