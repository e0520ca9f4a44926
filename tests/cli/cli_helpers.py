"""Helpers for CLI tests (a module with a unique name so tests can import it)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from moc_cli.cli.app import app
from moc_cli.testing import TINY_RECIPE, write_yaml


def invoke(*args: str):
    """Run `moc ARGS` in-process; wide columns keep Rich help boxes from wrapping examples."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})


def make_run_folder(folder: Path) -> Path:
    """What `moc eval` checks before loading anything: config.yaml and adapter/ (nothing is loaded)."""
    write_yaml(folder / "config.yaml", TINY_RECIPE)
    (folder / "adapter").mkdir(parents=True, exist_ok=True)
    return folder
