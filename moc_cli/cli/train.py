"""`moc train`: resolve and validate the config, then hand it to the training runner."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moc_cli.cli.common import (
    EXIT_USAGE,
    ConfigFileOption,
    cli_errors,
    err,
    fail_config,
    load_or_exit,
    quoted,
)
from moc_cli.config import ConfigError, ConfigIssue

# 128 + SIGTERM: what a shell reports for a process that SIGTERM ended.
EXIT_TERMINATED = 143

EPILOG = """\
Examples:

  moc train --recipe glue/sst2

  moc train --recipe glue/sst2 method.r=8 training.max_steps=200 --output-dir runs/sst2-r8

  moc train --recipe glue/sst2 --config my.yaml method.name=lora --dry-run

  moc train --recipe glue/sst2 --resume auto --output-dir runs/sst2-r8

Without --output-dir a run gets a new folder runs/<recipe>/<YYYYmmdd-HHMMSS>, and --resume auto
continues the newest one. SIGTERM (timeout, Docker, SLURM) stops like Ctrl-C: a checkpoint, then
exit code 143 (Ctrl-C: 130).

Every key with its type and default: `moc schema`; a recipe resolved with sources: `moc cat glue/sst2`.
"""


def train(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Overrides `key.path=value` (YAML-typed: 3e-4, true, \\[a,b]); `~key.path` resets a key. "
            "Keys: `moc schema`.",
            show_default=False,
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe", "-r", help="Packaged recipe name (see `moc ls`) or a path to a recipe YAML."
        ),
    ] = None,
    config: ConfigFileOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the resolved config with each value's source and exit."),
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="`auto` (latest checkpoint in the run dir; without --output-dir, of the recipe's newest "
            "run; starts fresh when nothing was saved yet) or a checkpoint directory.",
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            "-o",
            help="Run directory (same as output.dir=DIR). Default: a new runs/<recipe>/<YYYYmmdd-HHMMSS>.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Allow a non-empty run directory (output.overwrite=true).")
    ] = False,
    no_progress: Annotated[
        bool,
        typer.Option("--no-progress", help="No progress bar, plain log lines only (output.progress=plain)."),
    ] = False,
) -> None:
    """Fine-tune a model from a recipe: defaults -> recipe -> --config -> overrides (later wins).

    The config is validated completely (every error listed, exit code 2) before anything loads.
    """
    items = list(overrides or [])
    if output_dir is not None:
        items.append(f"output.dir={quoted(output_dir)}")
    if overwrite:
        items.append("output.overwrite=true")
    if no_progress:
        items.append("output.progress=plain")
    if recipe is None and config is None:
        err("error: give --recipe NAME (see `moc ls`) or --config FILE")
        raise typer.Exit(EXIT_USAGE)

    cfg, provenance = load_or_exit(recipe, config, items)
    if resume is not None and resume != "auto" and not Path(resume).expanduser().is_dir():
        raise fail_config(
            ConfigError(
                ConfigIssue("--resume", f"checkpoint directory not found: {resume}; use `auto` or a path")
            )
        )
    if dry_run:
        typer.echo(f"# moc train --dry-run: resolved config for {cfg.recipe or config} (nothing was run)")
        from moc_cli.config import render_config

        typer.echo(render_config(cfg, provenance), nl=False)
        return

    from moc_cli.config.preflight import preflight

    issues = preflight(cfg, provenance)
    if issues:
        raise fail_config(ConfigError(issues))

    hint = "; continue with the same command plus `--resume auto`"
    with cli_errors("training", interrupt_hint=hint):
        from moc_cli.training import run_training

        try:
            run_dir = run_training(cfg, provenance, resume)
        except BaseException as exc:
            # Failures that carry their own one-line report and exit code: SIGTERM (143, after a
            # checkpoint) and a save that hit a full disk (1).
            code = getattr(exc, "exit_code", None)
            if not isinstance(code, int) or not hasattr(exc, "cli_message"):
                raise
            message = exc.cli_message + (hint if code == EXIT_TERMINATED else "")
            err(message)
            raise typer.Exit(code) from None
    # The run summary above already names the folder; this line says what to do with it.
    typer.echo(f"next: moc eval {run_dir}   |   moc merge-export {run_dir}")
