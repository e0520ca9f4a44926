"""Baseline PEFT methods that peft does not ship (MoLEx), registered with peft like MoC.

`import moc_cli` registers MoLEx (`register_molex`) once this package has been imported.
"""

from __future__ import annotations

from .molex import MolexConfig, MolexLayer, MolexModel, MolexPeftType

__all__ = ["MolexConfig", "MolexLayer", "MolexModel", "MolexPeftType", "register_molex"]


def register_molex() -> None:
    """Make peft load and build MoLEx adapters ("peft_type": "MOLEX"); idempotent.

    peft's `register_peft_method` only accepts members of its closed `PeftType` Enum and is not
    idempotent, so the three mapping entries it would write are written here directly.
    """
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )

    if PEFT_TYPE_TO_CONFIG_MAPPING.get(MolexPeftType.MOLEX) is MolexConfig:
        return
    PEFT_TYPE_TO_PREFIX_MAPPING[MolexPeftType.MOLEX] = MolexModel.prefix
    PEFT_TYPE_TO_CONFIG_MAPPING[MolexPeftType.MOLEX] = MolexConfig
    PEFT_TYPE_TO_TUNER_MAPPING[MolexPeftType.MOLEX] = MolexModel
