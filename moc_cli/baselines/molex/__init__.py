"""MoLEx (Mixture of Layer Experts, ICLR 2025) as a registered peft tuner: the cross-block baseline for MoC."""

from .config import MolexConfig, MolexPeftType
from .layer import MolexLayer
from .model import DEFAULT_LAYERS_PATTERNS, MolexModel

__all__ = ["DEFAULT_LAYERS_PATTERNS", "MolexConfig", "MolexLayer", "MolexModel", "MolexPeftType"]
