"""Errors the training runner raises for bad user input and for Ctrl-C."""

from __future__ import annotations

from moc_cli.config import SetupError


class RunSetupError(SetupError):
    """A run cannot start as configured (its folder, resume, data, method); exit code 2."""


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving a resumable checkpoint (`checkpoint` is its path)."""

    def __init__(self, checkpoint: str | None) -> None:
        super().__init__(checkpoint)
        self.checkpoint = checkpoint
