"""`MolexConfig`: Mixture of Layer Experts (MoLEx, ICLR 2025), the cross-block baseline MoC improves on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, get_args

from peft import PeftConfig


class MolexPeftType(str, Enum):
    """peft's `PeftType` is a closed Enum; a `str` Enum member hashes like its value, so "MOLEX" read
    back from `adapter_config.json` finds the registered mapping entries."""

    MOLEX = "MOLEX"


# The annotation is the one declaration of the choices (the run schema reads it).
Routing = Literal["sequence", "token"]
ROUTING_CHOICES: tuple[str, ...] = get_args(Routing)


@dataclass
class MolexConfig(PeftConfig):
    """Each transformer layer's output is mixed with the output of router-chosen *other* pretrained layers
    applied to the same input:

        out_l = alpha * Layer_l(u) + (1 - alpha) * sum_{j in TopK(p_l)} p_{l,j} * Layer_j(u)

    Only the routers (one `Linear(d, L)` per layer, no bias) train; every layer stays frozen. Unlike MoC
    (whose experts start at zero), MoLEx does not start as the pretrained model when `alpha < 1`.
    """

    alpha: float = field(
        default=0.95,
        metadata={"help": "Weight of the layer's own output; 1.0 reproduces the base model exactly."},
    )
    top_k: int = field(default=1, metadata={"help": "Number of expert layers mixed in per routing decision."})
    layers_pattern: str | None = field(
        default=None,
        metadata={
            "help": "Dotted path of the ModuleList of transformer layers, e.g. `encoder.layer` (BERT family) "
            "or `model.layers` (LLaMA family); None picks the default for the model type."
        },
    )
    router_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the routers."})
    routing: Routing = field(
        default="sequence",
        metadata={
            "help": "`sequence`: one choice per sequence from the mean of its non-padding token states "
            "(one extra layer forward per layer and sequence; sees the whole sequence, so not causal); "
            "`token`: one choice per token (causal, but every expert chosen by any token of a sequence "
            "runs on that whole sequence)."
        },
    )
    target_modules: str | None = field(
        default=None,
        metadata={"help": "Regex of the layer modules; filled from `layers_pattern`, leave unset."},
    )
    target_parameters: list[str] | None = field(default=None, metadata={"help": "Unused; peft reads it."})
    exclude_modules: list[str] | None = field(default=None, metadata={"help": "Unused; peft reads it."})
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Extra modules trained and saved (task heads; peft adds them for SEQ_CLS)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MolexPeftType.MOLEX
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"MolexConfig.alpha must be in [0, 1], got {self.alpha}")
        if int(self.top_k) < 1:
            raise ValueError(f"MolexConfig.top_k must be >= 1, got {self.top_k}")
        if float(self.router_temperature) <= 0.0:
            raise ValueError(f"MolexConfig.router_temperature must be > 0, got {self.router_temperature}")
        if self.routing not in ROUTING_CHOICES:
            raise ValueError(
                f"MolexConfig.routing must be one of {list(ROUTING_CHOICES)}, got {self.routing!r}"
            )
