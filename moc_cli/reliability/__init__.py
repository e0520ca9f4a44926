"""Reliability pieces the training runner and the loaders call.

- `checkpoints`: checkpoint validation, atomic-completion markers, resume selection.
- `nan_guard`: stop a run at the first non-finite loss, grad norm or trainable weight.
- `compat`: refuse an adapter whose saved tensors do not fit the base model, before any weight changes.
- `safety`: safetensors-only weight loading, explicit `trust_remote_code`, a scanner for unsafe loads.

Submodules are imported explicitly (`from moc_cli.reliability.checkpoints import ...`) so that
importing this package stays cheap for the CLI.
"""

from __future__ import annotations

from typing import Any

from moc_cli._lazy import lazy_exports

_LAZY = {"NonFiniteLossError": "moc_cli.reliability.nan_guard"}

__all__ = ["NonFiniteLossError", "default_callbacks"]  # noqa: F822 (resolved lazily by __getattr__)


__getattr__ = lazy_exports(__name__, _LAZY)


def default_callbacks() -> list[Any]:
    """The TrainerCallbacks every training run should carry: completion markers, then the NaN guard."""
    from moc_cli.reliability.checkpoints import AtomicCheckpointCallback
    from moc_cli.reliability.nan_guard import NanGuardCallback

    return [AtomicCheckpointCallback(), NanGuardCallback()]
