"""Errors raised by export and prediction; each carries the CLI exit code it maps to."""

from __future__ import annotations


class ExportError(Exception):
    """A failure the user can fix (bad input, unsupported combination); exit code 2 by default."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
