"""Errors the training runner raises for bad user input and for Ctrl-C."""

from __future__ import annotations

from moc_cli.config import ConfigError, ConfigIssue


class RunSetupError(ConfigError):
    """A run cannot start as configured; the message names the key or path and the fix.

    A ConfigError, so the CLI reports it like any config problem (exit code 2).
    """

    def __init__(self, message: str, key: str = "") -> None:
        self.message = message
        super().__init__(ConfigIssue(key, message))


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving a resumable checkpoint (`checkpoint` is its path)."""

    def __init__(self, checkpoint: str | None) -> None:
        super().__init__(checkpoint)
        self.checkpoint = checkpoint
