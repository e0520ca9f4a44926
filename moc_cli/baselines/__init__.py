"""Baseline PEFT methods that peft does not ship (MoLEx), registered with peft like MoC."""

from __future__ import annotations

from .molex import MolexConfig, MolexLayer, MolexModel, MolexPeftType

__all__ = ["MolexConfig", "MolexLayer", "MolexModel", "MolexPeftType", "register"]


def register() -> None:
    """Make peft load and build MoLEx adapters ("peft_type": "MOLEX"); safe to call any number of times.

    peft's `register_peft_method` only accepts members of its closed `PeftType` Enum and is not
    idempotent, so the three mapping entries it would write are written here directly.
    """
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )

    if MolexPeftType.MOLEX in PEFT_TYPE_TO_CONFIG_MAPPING:
        return
    PEFT_TYPE_TO_PREFIX_MAPPING[MolexPeftType.MOLEX] = MolexModel.prefix
    PEFT_TYPE_TO_CONFIG_MAPPING[MolexPeftType.MOLEX] = MolexConfig
    PEFT_TYPE_TO_TUNER_MAPPING[MolexPeftType.MOLEX] = MolexModel


register()
