"""Errors raised when an asset (packaged model or data file) cannot be found."""

from __future__ import annotations


class AssetError(Exception):
    """Base class of asset resolution errors."""


class AssetNotInstalledError(AssetError, ImportError):
    """The Python distribution that ships an asset is not installed.

    The message contains the exact `pip install --no-deps ...` command that fixes it.
    """

    def __init__(self, message: str, *, distribution: str, install_command: str) -> None:
        super().__init__(message)
        self.distribution = distribution
        self.install_command = install_command


class AssetPathError(AssetError, FileNotFoundError):
    """The distribution is installed, but the path inside it does not exist."""

    def __init__(self, message: str, *, distribution: str, path: str) -> None:
        super().__init__(message)
        self.distribution = distribution
        self.path = path
