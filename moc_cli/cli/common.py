"""Helpers shared by the command modules: error reporting, exit codes, override pre-checks."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.exceptions import TyperException

from moc_cli.config import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from moc_cli.config import RunConfig


def quiet_library_noise() -> None:
    """Silence what libraries print on every command although nothing is wrong.

    - peft reads transformers' deprecated `is_gradient_checkpointing` in every PeftModel: a
      FutureWarning addressed to peft's authors, not to the user.
    - Per-file progress bars of huggingface_hub and transformers ("Loading weights") only make
      sense on a terminal; in a log file they are noise (read when those libraries are imported).
    """
    warnings.filterwarnings(
        "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


quiet_library_noise()

# Exit codes (listed for users in README.md, "The CLI"; 143 for SIGTERM is EXIT_TERMINATED in train.py)
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# The `--config` option of every command that resolves a recipe (train, cat, validate).
ConfigFileOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Your YAML file, applied over the recipe.", dir_okay=False),
]


def err(message: str) -> None:
    typer.echo(message, err=True)


# Global options of the current invocation, set by the app callback.
STATE: dict[str, bool] = {"verbose": False}


def verbose_enabled() -> bool:
    return STATE["verbose"] or os.environ.get("MOC_DEBUG", "") not in ("", "0")


def fail_config(error: ConfigError) -> typer.Exit:
    """Print every config issue to stderr; the caller raises the returned Exit (code 2)."""
    err(error.format())
    return typer.Exit(EXIT_USAGE)


@contextlib.contextmanager
def cli_errors(action: str, interrupt_hint: str = "") -> Iterator[None]:
    """Map failures to exit codes: config 2, Ctrl-C 130, export errors their own code, anything else 1
    with a one-line message."""
    try:
        yield
    except (typer.Exit, typer.Abort, TyperException):
        raise  # already carries its exit code
    except ConfigError as exc:
        raise fail_config(exc) from None
    except KeyboardInterrupt as exc:
        checkpoint = getattr(exc, "checkpoint", None)  # set by the training runner's RunInterrupted
        saved = f"; checkpoint saved at {checkpoint}" if checkpoint else ""
        err(f"{action} interrupted (Ctrl-C){saved}{interrupt_hint}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if verbose_enabled():
            traceback.print_exc(file=sys.stderr)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        code = _own_exit_code(exc)
        if code is not None:
            err(f"error: {str(exc).strip()}")
            raise typer.Exit(code) from None
        if _speaks_for_itself(exc):
            # The message already names the file, line and fix: no class name, no traceback hint.
            err(f"error: {action} failed: {text}")
        else:
            hint = "" if verbose_enabled() else " (run `moc -v ...` for the traceback)"
            err(f"error: {action} failed: {type(exc).__name__}: {text}{hint}")
        raise typer.Exit(EXIT_RUNTIME) from None


def _own_exit_code(exc: BaseException) -> int | None:
    """The exit code an export or prediction error carries (2: bad input; 1: a damaged file)."""
    from moc_cli.export.errors import ExportError

    return exc.exit_code if isinstance(exc, ExportError) else None


def _speaks_for_itself(exc: BaseException) -> bool:
    """Errors written for the user (bad data files, damaged exports), not programming errors."""
    from moc_cli.tasks.base import TaskDataError, TaskOptionError

    return isinstance(exc, (TaskDataError, TaskOptionError))


def check_override_syntax(overrides: list[str]) -> None:
    """Reject malformed `key.path=value` items up front (the config loader repeats this check)."""
    from moc_cli.config.layering import parse_override

    issues: list[ConfigIssue] = []
    for item in overrides:
        try:
            parse_override(item)
        except ConfigError as exc:
            issues.extend(exc.issues)
    if issues:
        raise fail_config(ConfigError(issues))


def quoted(value: str | Path) -> str:
    """A string value for an override that YAML must not retype (`123` stays a string)."""
    return json.dumps(str(value))


def load_or_exit(
    recipe: str | None, config_file: Path | None, overrides: list[str]
) -> tuple[RunConfig, dict[str, str]]:
    """`load_run_config`, turning ConfigError into exit code 2 with every issue printed."""
    try:
        from moc_cli.config import load_run_config  # builds the schema: imports peft

        return load_run_config(recipe, str(config_file) if config_file else None, overrides)
    except ConfigError as exc:
        raise fail_config(exc) from None
