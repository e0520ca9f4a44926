"""The `moc` Typer app: one module per command, heavy imports only inside command bodies."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from moc_cli.cli import bench, eval_cmd, inspect_cmds, merge_export, predict, sweep, train
from moc_cli.cli.common import STATE

app = typer.Typer(
    name="moc",
    help="Mixture-of-Control (MoC) fine-tuning: recipes for transformers.Trainer with a custom peft tuner.",
    epilog="Start with `moc ls`, then `moc train --recipe <name> --dry-run`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        from moc_cli.cli.inspect_cmds import _version

        typer.echo(f"moc_cli {_version('moc_cli') or '(source tree)'}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print full tracebacks on errors.")
    ] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Never contact the Hugging Face Hub (sets HF_HUB_OFFLINE=1).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Mixture-of-Control (MoC) fine-tuning CLI."""
    ctx.obj = {"verbose": verbose}
    STATE["verbose"] = verbose
    if offline:
        # Read by huggingface_hub/datasets at import time, which happens later inside commands.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


app.command("train", epilog=train.EPILOG)(train.train)
app.command("eval", epilog=eval_cmd.EPILOG)(eval_cmd.eval_)
app.command("ls", epilog=inspect_cmds.LS_EPILOG)(inspect_cmds.ls)
app.command("cat", epilog=inspect_cmds.CAT_EPILOG)(inspect_cmds.cat)
app.command("validate", epilog=inspect_cmds.VALIDATE_EPILOG)(inspect_cmds.validate)
app.command("env", epilog=inspect_cmds.ENV_EPILOG)(inspect_cmds.env)
app.command("schema", epilog=inspect_cmds.SCHEMA_EPILOG)(inspect_cmds.schema)
app.command("sweep", epilog=sweep.EPILOG)(sweep.sweep)
app.command("merge-export")(merge_export.merge_export)
app.command("predict")(predict.predict)
app.command("bench")(bench.bench)


def main() -> None:
    """Console-script entry point (`moc`)."""
    try:
        app(prog_name="moc")
    finally:
        release_process_group()


def release_process_group() -> None:
    """Destroy a launch's process group while the interpreter is still whole.

    Left to interpreter shutdown, gloo's worker threads can outlive the objects they use and the
    process dies with SIGABRT ("terminate called without an active exception") after an otherwise
    clean exit, e.g. an interrupted DDP run whose checkpoint is already saved. Commands that never
    imported torch.distributed skip this without importing it.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
