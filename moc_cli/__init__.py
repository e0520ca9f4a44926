"""moc_cli: Mixture-of-Control (MoC) as a peft tuner, plus the `moc` recipe CLI.

Importing the package makes MoC (and the MoLEx baseline) known to peft, so every entry point must
`import moc_cli` before loading a saved adapter. This module is the one place that registers them:
each tuner package is registered the moment its own import completes, and once peft is imported
both are imported (at once when peft already is, otherwise when it is). `import moc_cli` itself
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
from typing import TYPE_CHECKING

from moc_cli._lazy import lazy_exports

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
# The packages that add a method to peft, and the (idempotent) function of each that registers it.
_TUNER_PACKAGES = {"moc_cli.tuner": "register_moc", "moc_cli.baselines": "register_molex"}


def _import_tuner_packages() -> None:
    """Import the tuner packages; `_RegisterWithPeft` registers each as its import completes."""
    for name in _TUNER_PACKAGES:
        # A package that is mid-import (peft was pulled in by its own imports) is registered when
        # its import completes.
        if name not in sys.modules:
            importlib.import_module(name)


class _RegisterWithPeft(importlib.abc.MetaPathFinder):
    """Finds `peft` and the tuner packages through the normal finders and acts once each has loaded.

    After a tuner package runs, its registration function is called; after `peft` runs, the tuner
    packages are imported. `importlib.util.find_spec("peft")` alone (as transformers' availability
    checks do) executes nothing and so triggers nothing.
    """

    searching = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if (fullname != "peft" and fullname not in _TUNER_PACKAGES) or self.searching:
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
            if fullname == "peft":
                _import_tuner_packages()
            else:
                getattr(module, _TUNER_PACKAGES[fullname])()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if not any(isinstance(f, _RegisterWithPeft) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithPeft())
if "peft" in sys.modules:
    _import_tuner_packages()


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["MocConfig", "MocModel", "__version__", "load_exported", "register_moc"]
