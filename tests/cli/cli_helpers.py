"""Helpers for CLI tests (a module with a unique name so tests can import it)."""

from __future__ import annotations

from typer.testing import CliRunner

from moc_cli.cli.app import app


def invoke(*args: str):
    """Run `moc ARGS` in-process; wide columns keep Rich help boxes from wrapping examples."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
