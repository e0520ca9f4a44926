"""`moc eval`: evaluate a finished run (or an adapter directory) and print its metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from moc_cli.cli.common import check_override_syntax, cli_errors

# Imported with the CLI (it loads only the config schema): `eval_target` checks a folder before the
# heavy `run_eval` is imported.
from moc_cli.training import evaluation

EPILOG = """\
Examples:

  moc eval runs/glue/sst2/20260101-120000

  moc eval runs/glue/sst2/20260101-120000 --split test data.max_test_samples=200

  moc eval runs/glue/sst2/20260101-120000/adapter --json
"""


def _rows(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten nested results ({split: {metric: value}}) into (name, value) rows."""
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _rows(value, f"{name}/")
        else:
            rows.append((name, value))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_metrics_table(metrics: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    typer.echo(title)  # above the table: a Rich title would wrap to the table's narrow width
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in _rows(metrics):
        table.add_row(name, _fmt(value))
    Console(width=120).print(table)


def eval_(
    path: Annotated[
        Path,
        typer.Argument(
            help="Run directory (from `moc train`) or adapter directory.", exists=True, file_okay=False
        ),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Overrides `key.path=value` applied to the run's saved config.", show_default=False
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Split to evaluate; default: the task's eval split(s)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the metrics as JSON instead of a table.")
    ] = False,
) -> None:
    """Evaluate a trained run or adapter on a split and print the metrics."""
    items = list(overrides or [])
    check_override_syntax(items)
    with cli_errors("evaluation"):
        # Before torch and the model load: a folder that is not a run fails in well under a second.
        split_name = evaluation.eval_target(path, split, items)
        from moc_cli.training import run_eval

        metrics = run_eval(path, split, items)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    else:
        print_metrics_table(metrics, f"{path}  split: {split_name}")
