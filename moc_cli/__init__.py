"""moc_cli: Mixture-of-Control (MoC) as a peft tuner, plus the `moc` recipe CLI.

Importing the package makes MoC (and the MoLEx baseline) known to peft, so every entry point must
`import moc_cli` before loading a saved adapter. Registration happens at once when peft is already
imported, and otherwise the moment it is (a one-shot post-import hook). `import moc_cli` itself
therefore loads neither torch nor peft, which keeps `moc --help` and the config commands quick.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from moc_cli.export import load_exported
    from moc_cli.tuner import MocConfig, MocModel, register_moc

# Public names and the module that defines each, imported on first access.
_LAZY = {
    "MocConfig": "moc_cli.tuner",
    "MocModel": "moc_cli.tuner",
    "register_moc": "moc_cli.tuner",
    "load_exported": "moc_cli.export",
}
# Each registers its peft method when imported.
_TUNER_PACKAGES = ("moc_cli.tuner", "moc_cli.baselines")


def _register_with_peft() -> None:
    for name in _TUNER_PACKAGES:
        # A package that is mid-import (peft was pulled in by its own imports) registers itself
        # when its import finishes.
        if name not in sys.modules:
            importlib.import_module(name)


class _RegisterAfterPeftImport(importlib.abc.MetaPathFinder):
    """Finds `peft` through the normal finders and runs `_register_with_peft` once it has loaded.

    It stays installed until peft is really executed: `importlib.util.find_spec("peft")` alone (as
    transformers' availability checks do) must not use it up.
    """

    searching = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "peft" or self.searching:
            return None
        self.searching = True  # the lookup below goes through sys.meta_path again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.searching = False
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_with_peft()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "peft" in sys.modules:
    _register_with_peft()
elif not any(isinstance(f, _RegisterAfterPeftImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterPeftImport())


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'moc_cli' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["MocConfig", "MocModel", "__version__", "load_exported", "register_moc"]
