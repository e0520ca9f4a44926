"""`MocConfig`: the peft config dataclass of Mixture-of-Control (MoC).

Every field carries `metadata={"help": ...}` (the CLI and docs read it) and is validated in
`__post_init__`; errors name the field, the bad value and the allowed values.

Choices recorded here (see docs/moc-method.md, marked [choice] there):

- `both-shared`: one router per block, computed from the block input (the attention site's `u`);
  the FFN site reuses its expert index and gate. Its statistics are reported under the key
  `"block"`. `both-separate` has two routers (`"attn"`, `"ffn"`); the balance loss is averaged
  over all routing events (one per router per layer and forward).
- `alpha == 1.0` with `learnable_alpha=False`, or `global_control=False`: the per-block Control
  baseline; no router (and no router parameters) is created.
- `learnable_alpha=True`: one logit per (site type, layer), `alpha_l = sigmoid(logit)`,
  initialised at `alpha`; adds `S * L` parameters.
- `exclude_self=True` masks the layer's own expert out of the router softmax; the balance loss then
  normalises by the E - 1 experts a layer may pick, `(E - 1) * sum_i f_i P_i`, so that uniform
  routing over them gives 1, as uniform routing over all E does without the option.
- `expert_compute="auto"`: the sparse autograd function whenever gradients are recorded (it
  stores about E + 2r numbers per token instead of 2*E*r). Under `torch.no_grad()` / inference,
  where nothing is stored, whichever is faster: sparse for wide pools (E*r >= 160) with at least 4
  tokens per expert on CPU, else the plain dense formulation (narrow pools, decoding, GPUs).
  `benchmarks/results/kernels.md` has the timings of both per pool shape (the sparse function
  also picks, by pool width, between one all-rows projection and per-expert segments; see
  `functional.py`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from peft import PeftConfig

# The choices of the enumerated fields, as Literal types: the annotation is their one declaration
# (the run schema reads the choices from it), the tuples are what the checks below use.
Variant = Literal["ffn", "attn", "both-separate", "both-shared", "block"]
RouterScope = Literal["global", "per_layer"]
InitA = Literal["kaiming", "normal"]
ExpertCompute = Literal["sparse", "dense", "auto"]
VARIANTS: tuple[str, ...] = get_args(Variant)
ROUTER_SCOPES: tuple[str, ...] = get_args(RouterScope)
INIT_A: tuple[str, ...] = get_args(InitA)
EXPERT_COMPUTE: tuple[str, ...] = get_args(ExpertCompute)


class MocPeftType(str, enum.Enum):
    """peft type of MoC. A `str` Enum hashes like its value, so `"MOC"` read back from
    `adapter_config.json` finds the registered entries in peft's mapping dicts."""

    MOC = "MOC"


def _bad(field_name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"MocConfig.{field_name}={value!r} is invalid; allowed: {allowed}.")


@dataclass
class MocConfig(PeftConfig):
    """Configuration of a Mixture-of-Control adapter (a `peft.PeftConfig`)."""

    r: int = field(default=16, metadata={"help": "Rank r of every control map c(u) = s * B A u."})
    control_scale: float = field(
        default=1.0, metadata={"help": "Scale s applied to the control output (no alpha/r rescaling)."}
    )
    control_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout probability on u before the control projection (router reads u)."},
    )
    alpha: float = field(
        default=0.95,
        metadata={
            "help": "Mix weight of the local control: c = alpha * local + (1 - alpha) * global. 1.0 = Control."
        },
    )
    learnable_alpha: bool = field(
        default=False,
        metadata={
            "help": "Learn one alpha per site type and layer (sigmoid-parametrised, initialised at alpha)."
        },
    )
    top_k: int = field(
        default=1, metadata={"help": "Number of experts (other layers' controls) each token borrows."}
    )
    variant: Variant = field(
        default="both-shared",
        metadata={"help": f"Where controls attach and how routers are shared; one of {', '.join(VARIANTS)}."},
    )
    global_control: bool = field(
        default=True,
        metadata={
            "help": "False = per-block Control baseline: local controls only, no router parameters at all."
        },
    )
    router_scope: RouterScope = field(
        default="global",
        metadata={
            "help": "'global': one router shared by all layers of a site type; 'per_layer': one per layer."
        },
    )
    router_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature tau of the router."}
    )
    router_bias: bool = field(default=False, metadata={"help": "Give each router a bias of E parameters."})
    renormalize_topk: bool = field(
        default=False,
        metadata={"help": "Renormalise the top-k gate probabilities to sum to 1 (off: Switch style)."},
    )
    exclude_self: bool = field(
        default=False,
        metadata={"help": "Forbid a layer from routing to its own control (masked in the softmax)."},
    )
    aux_loss_coef: float = field(
        default=0.01,
        metadata={"help": "Weight lambda of the load-balancing loss added to outputs.loss in training."},
    )
    init_a: InitA = field(
        default="kaiming",
        metadata={
            "help": "Init of A: 'kaiming' (Kaiming-uniform, a=sqrt(5)) or 'normal' (N(0, 0.02)). B starts at 0."
        },
    )
    expert_compute: ExpertCompute = field(
        default="auto",
        metadata={
            "help": "'sparse': fused autograd function saving ~E+2r numbers per token; 'dense': plain autograd "
            "over all E*r rows; 'auto': sparse when gradients are recorded, else whichever is faster for "
            "the pool and input size (see functional.py)."
        },
    )
    layers_pattern: str | None = field(
        default=None,
        metadata={
            "help": "Dotted path of the ModuleList holding the transformer layers (e.g. 'encoder.layer', "
            "'model.layers', 'h'); overrides the architecture map. Required for unknown model types (variant 'block')."
        },
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Restrict which transformer layers are controlled (and become experts): a regex (full match) "
            "or a list of names/suffixes of layer modules. None = all layers."
        },
    )
    layers_to_transform: list[int] | None = field(
        default=None, metadata={"help": "Restrict the controlled layers to these indices of the layer list."}
    )
    architecture: dict | None = field(
        default=None,
        metadata={
            "help": "Override of the architecture map entry: {'layers': path, 'sites': {'attn': {'writer': path, "
            "'reader': 'arg:<i>:<name>' | 'tap:<path>'}, 'ffn': {...}}} (paths relative to a layer)."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Extra modules trained and saved in full, e.g. a classifier head (peft adds it for SEQ_CLS)."
        },
    )
    target_parameters: list[str] | None = field(
        default=None, metadata={"help": "Unused by MoC; present because peft reads it."}
    )
    trainable_token_indices: list[int] | dict[str, list[int]] | None = field(
        default=None,
        metadata={
            "help": "Token ids whose embedding rows train and save with the adapter (peft's trainable tokens), "
            "e.g. chat-template tokens that TRL's SFTConfig(chat_template_path=...) adds to the vocabulary; a list "
            "for the input embedding or {module name: ids}."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MocPeftType.MOC
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if self.target_modules == "all-linear":
            raise _bad(
                "target_modules", self.target_modules, "None, a regex or a list of transformer layer names"
            )
        self._validate()

    def _validate(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise _bad("r", self.r, "an integer >= 1")
        if not isinstance(self.control_scale, (int, float)) or isinstance(self.control_scale, bool):
            raise _bad("control_scale", self.control_scale, "a real number")
        if not (isinstance(self.control_dropout, (int, float)) and 0.0 <= self.control_dropout < 1.0):
            raise _bad("control_dropout", self.control_dropout, "a float in [0, 1)")
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise _bad("alpha", self.alpha, "a float in [0, 1]")
        if self.learnable_alpha and not 0.0 < self.alpha < 1.0:
            raise _bad("alpha", self.alpha, "a float strictly between 0 and 1 when learnable_alpha=True")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise _bad("top_k", self.top_k, "an integer >= 1 (and <= the number of controlled layers)")
        if self.variant not in VARIANTS:
            raise _bad("variant", self.variant, ", ".join(VARIANTS))
        if self.router_scope not in ROUTER_SCOPES:
            raise _bad("router_scope", self.router_scope, ", ".join(ROUTER_SCOPES))
        if not (isinstance(self.router_temperature, (int, float)) and self.router_temperature > 0):
            raise _bad("router_temperature", self.router_temperature, "a float > 0")
        if not (isinstance(self.aux_loss_coef, (int, float)) and self.aux_loss_coef >= 0):
            raise _bad("aux_loss_coef", self.aux_loss_coef, "a float >= 0")
        if self.init_a not in INIT_A:
            raise _bad("init_a", self.init_a, ", ".join(INIT_A))
        if self.expert_compute not in EXPERT_COMPUTE:
            raise _bad("expert_compute", self.expert_compute, ", ".join(EXPERT_COMPUTE))
        for name in ("global_control", "learnable_alpha", "router_bias", "renormalize_topk", "exclude_self"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, getattr(self, name), "True or False")
        if self.layers_pattern is not None and (
            not isinstance(self.layers_pattern, str) or not self.layers_pattern
        ):
            raise _bad("layers_pattern", self.layers_pattern, "None or a non-empty dotted module path")
        if self.layers_to_transform is not None:
            if isinstance(self.layers_to_transform, int):
                self.layers_to_transform = [self.layers_to_transform]
            if not all(isinstance(i, int) and i >= 0 for i in self.layers_to_transform):
                raise _bad(
                    "layers_to_transform", self.layers_to_transform, "None or a list of layer indices >= 0"
                )
        if self.architecture is not None:
            from .architectures import ArchSpec

            ArchSpec.from_dict(self.architecture)  # raises a ValueError naming the bad key

    @property
    def routed(self) -> bool:
        """Whether this config routes between experts (False = the per-block Control baseline)."""
        return self.global_control and not (self.alpha == 1.0 and not self.learnable_alpha)

    @property
    def site_types(self) -> tuple[str, ...]:
        """Control site types of the variant, in forward order within a layer."""
        return {
            "ffn": ("ffn",),
            "attn": ("attn",),
            "both-separate": ("attn", "ffn"),
            "both-shared": ("attn", "ffn"),
            "block": ("block",),
        }[self.variant]

    def router_key(self, site: str) -> str:
        """Name of the router that routes `site` ('block' for the shared router of both-shared)."""
        return "block" if self.variant == "both-shared" else site

    @property
    def router_keys(self) -> tuple[str, ...]:
        if not self.routed:
            return ()
        return tuple(dict.fromkeys(self.router_key(s) for s in self.site_types))
