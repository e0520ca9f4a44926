"""moc_cli: Mixture-of-Control (MoC) as a peft tuner, plus the `moc` recipe CLI.

Importing the package registers MoC (and the MoLEx baseline, when present) with peft, so every
entry point must `import moc_cli` before loading a saved adapter. No CLI modules are imported here.
"""

from __future__ import annotations

import importlib
from typing import Any

from moc_cli.tuner import MocConfig, MocModel, register_moc

__version__ = "0.1.0"

register_moc()


def _register_baselines() -> None:
    try:
        baselines = importlib.import_module("moc_cli.baselines")
    except ImportError as exc:
        if exc.name != "moc_cli.baselines":  # an error inside the package must surface
            raise
        return
    register = getattr(baselines, "register", None)
    if callable(register):
        register()


_register_baselines()


def __getattr__(name: str) -> Any:
    if name == "load_exported":
        from moc_cli.export import load_exported

        return load_exported
    raise AttributeError(f"module 'moc_cli' has no attribute {name!r}")


__all__ = ["MocConfig", "MocModel", "__version__", "load_exported", "register_moc"]
