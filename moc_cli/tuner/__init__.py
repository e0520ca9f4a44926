"""Mixture-of-Control (MoC) as a custom peft tuner.

Laid out like peft's own tuners: `config` (MocConfig), `layer` (parameter-free wrappers of the
writers and taps), `model` (MocModel, the tuner, and the routing-statistics functions). Beside them:
`architectures` (the declarative site map), `state` (an adapter's trainable tensors), `routing`
(the per-model `ControlContext`: routing, balance loss, statistics) and `functional` (the fused
sparse / dense expert mixture and its `KernelPolicy`). The method: docs/moc-method.md.

`register_moc()` registers MoC with peft through its own `str` Enum `MocPeftType` and the three
peft mapping dicts (no enum internals), idempotently. `moc_cli`'s import hook calls it once this
package has been imported; every process that loads a saved MoC adapter must `import moc_cli` first.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

from .architectures import ARCHITECTURES
from .config import MocConfig, MocPeftType
from .functional import DEFAULT_KERNEL_POLICY, KernelPolicy, dense_mixture, sparse_mixture
from .layer import MERGE_ERROR, MocLayer, MocSiteLayer, MocTapLayer
from .model import MocModel, find_moc_model, reset_routing_stats, routing_stats


def register_moc() -> None:
    """Register MoC with peft (idempotent)."""
    if PEFT_TYPE_TO_CONFIG_MAPPING.get(MocPeftType.MOC) is MocConfig:
        return
    PEFT_TYPE_TO_PREFIX_MAPPING[MocPeftType.MOC] = MocModel.prefix
    PEFT_TYPE_TO_CONFIG_MAPPING[MocPeftType.MOC] = MocConfig
    PEFT_TYPE_TO_TUNER_MAPPING[MocPeftType.MOC] = MocModel


__all__ = [
    "ARCHITECTURES",
    "DEFAULT_KERNEL_POLICY",
    "MERGE_ERROR",
    "KernelPolicy",
    "MocConfig",
    "MocLayer",
    "MocModel",
    "MocPeftType",
    "MocSiteLayer",
    "MocTapLayer",
    "dense_mixture",
    "find_moc_model",
    "register_moc",
    "reset_routing_stats",
    "routing_stats",
    "sparse_mixture",
]
