"""Export (bundle / merged / onnx), `load_exported` and `predict`; heavy imports happen on first use."""

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


def predict(model_dir: str | Path, inputs: list[Any], **kwargs: Any) -> list[dict[str, Any]]:
    """Predict with an export or run directory; see `moc_cli.export.predict.predict`."""
    from moc_cli.export.predict import predict as _predict

    return _predict(model_dir, inputs, **kwargs)


__all__ = ["ExportError", "export", "load_exported", "predict"]
