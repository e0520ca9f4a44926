"""Mixture-of-Control (MoC) as a custom peft tuner.

Modules: `config` (MocConfig, documented choices), `architectures` (declarative site map),
`functional` (fused sparse / dense expert mixture), `state` (shared parameters and per-forward
runtime: routing, balance loss, statistics), `layer` (parameter-free wrappers of writers and taps),
`model` (MocModel, the peft tuner), `profiling` (bytes saved for backward).

`register_moc()` (run when this package is imported, which `import moc_cli` arranges) registers MoC with peft through its own `str` Enum
`MocPeftType` and the three peft mapping dicts (no enum internals), idempotently. Every process
that loads a saved MoC adapter must `import moc_cli` first.
"""

from __future__ import annotations

from typing import Any

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from torch import nn

from .architectures import ARCHITECTURES
from .config import MocConfig, MocPeftType
from .layer import MERGE_ERROR, MocLayer, MocSiteLayer, MocTapLayer
from .model import MocModel


def register_moc() -> None:
    """Register MoC with peft (idempotent)."""
    if PEFT_TYPE_TO_CONFIG_MAPPING.get(MocPeftType.MOC) is MocConfig:
        return
    PEFT_TYPE_TO_PREFIX_MAPPING[MocPeftType.MOC] = MocModel.prefix
    PEFT_TYPE_TO_CONFIG_MAPPING[MocPeftType.MOC] = MocConfig
    PEFT_TYPE_TO_TUNER_MAPPING[MocPeftType.MOC] = MocModel


def _find_tuner(model: nn.Module) -> MocModel:
    if isinstance(model, MocModel):
        return model
    for module in model.modules():
        if isinstance(module, MocModel):
            return module
    raise ValueError(f"{type(model).__name__} carries no MoC adapter (no MocModel inside).")


def routing_stats(model: nn.Module, adapter_name: str | None = None) -> dict[str, Any]:
    """Routing statistics of a MoC model since the last reset.

    Returns `{"balance_loss": float | None (last forward), "expert_usage": {router key: [[top-1 picks
    per expert] per layer]}, "routing_entropy": float | None (mean over routed tokens),
    "routing_matrix": {router key: L x E fractions}}`. Padding tokens are excluded. Router keys:
    `ffn`, `attn`, or `block` (shared router of `both-shared` and the `block` variant).
    """
    return _find_tuner(model).routing_stats(adapter_name)


def reset_routing_stats(model: nn.Module) -> None:
    """Clear the accumulated routing statistics of a MoC model."""
    _find_tuner(model).reset_routing_stats()


register_moc()

__all__ = [
    "ARCHITECTURES",
    "MERGE_ERROR",
    "MocConfig",
    "MocLayer",
    "MocModel",
    "MocPeftType",
    "MocSiteLayer",
    "MocTapLayer",
    "register_moc",
    "reset_routing_stats",
    "routing_stats",
]
