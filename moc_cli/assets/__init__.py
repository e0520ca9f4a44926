"""Models and data beyond the Hub: `pkg://` assets, one-time GGUF conversion, packaged datasets.

Importing this package is cheap: torch/transformers are imported only when a GGUF file is converted,
and `datasets` only by `moc_cli.assets.datasets`.
"""

from moc_cli._lazy import lazy_exports
from moc_cli.assets.catalog import KNOWN_ASSETS, install_command
from moc_cli.assets.errors import AssetError, AssetNotInstalledError, AssetPathError
from moc_cli.assets.pkg_uri import is_pkg_uri, package_dir, parse_pkg_uri, resolve_pkg_uri
from moc_cli.assets.sources import resolve_data_path, resolve_model_source

_LAZY = {"rotten_tomatoes_splits": "moc_cli.assets.datasets"}  # imports `datasets`: on first use

__all__ = [  # noqa: F822 (rotten_tomatoes_splits is resolved lazily by __getattr__)
    "KNOWN_ASSETS",
    "AssetError",
    "AssetNotInstalledError",
    "AssetPathError",
    "install_command",
    "is_pkg_uri",
    "package_dir",
    "parse_pkg_uri",
    "resolve_data_path",
    "resolve_model_source",
    "resolve_pkg_uri",
    "rotten_tomatoes_splits",
]


__getattr__ = lazy_exports(__name__, _LAZY)
