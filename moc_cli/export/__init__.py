"""Export (bundle / merged / onnx) and `load_exported`; heavy imports happen on first use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.export.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

    from moc_cli.export.exporter import ExportResult


def load_exported(path: str | Path) -> nn.Module:
    """Load a `moc merge-export` bundle (or merged) folder as a plain eval-mode torch module.

    A bundle comes back as the transformers model with the MoC controls in place and no peft wrapper;
    its logits are identical to the PEFT model it was exported from.
    """
    from moc_cli.export.bundle import load_exported as _load

    return _load(path)


def export(run_or_adapter_dir: str | Path, fmt: str | None = None, **kwargs: Any) -> ExportResult:
    """Export a run; see `moc_cli.export.exporter.export`."""
    from moc_cli.export.exporter import export as _export

    return _export(run_or_adapter_dir, fmt, **kwargs)


# `predict(model_dir, inputs)` lives in the submodule `moc_cli.export.predict` (a package-level
# function of the same name would be shadowed by the submodule once it is imported).
__all__ = ["ExportError", "export", "load_exported"]
