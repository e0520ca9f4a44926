"""The fine-tuning methods `method.name` can select, in one table.

Training, the run schema, the model card, export and the CLI all read this table; none keeps its
own list of method names or per-method facts. A method's *options* are not declared here: they are
the fields of its peft config dataclass (`MocConfig`, `MolexConfig`, peft's `LoraConfig`,
`IA3Config`), from which `moc_cli.config.method_fields` builds the `method` section of the schema.

This module imports nothing heavy; config classes are imported on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def _frozen(values: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class Method:
    """What the project knows about one value of `method.name`."""

    name: str
    title: str  # how the model card and reports name it
    summary: str  # one line: `moc schema`'s help for this name
    config_class: str | None  # "module:Class" of the peft config; None = full fine-tuning (no adapter)
    peft_type: str | None  # the `peft_type` its adapter_config.json records
    # The config fields offered as `method.<key>`. None = every field the class declares itself
    # (not those inherited from peft.PeftConfig), minus `excluded`.
    options: tuple[str, ...] | None = None
    excluded: tuple[str, ...] = ()
    # Fields the name itself sets (`dora` is LoRA with use_dora=True); a run may not change them.
    implied: Mapping[str, Any] = field(default_factory=_frozen)
    # Defaults of this project's recipes where they differ from the dataclass's, each with its reason.
    defaults: Mapping[str, Any] = field(default_factory=_frozen)
    # Bounds the config class does not check itself, as pydantic Field arguments (peft's LoraConfig
    # accepts r=0, which would fail only when the model is built).
    bounds: Mapping[str, Mapping[str, float]] = field(default_factory=_frozen)
    mergeable: bool = False  # its update folds into the base weights (merge-export --format merged)
    # Why it does not fold (methods that are not mergeable): merge-export's refusal and the card's note.
    no_merge_reason: str | None = None
    baseline: bool = True  # a comparison point, not MoC itself
    # MoC or its per-block special case: target_modules name transformer layers, routing statistics
    # are logged, and the adapter acts on hidden states (no merge, no LoRA-only serving stack).
    moc_family: bool = False

    def load_config_class(self) -> type:
        """The peft config dataclass (imports peft)."""
        if self.config_class is None:
            raise ValueError(f"method.name={self.name} trains every weight and has no adapter config")
        module, _, attr = self.config_class.partition(":")
        return getattr(importlib.import_module(module), attr)

    def option_fields(self) -> list[dataclasses.Field]:
        """The config dataclass fields offered as `method.<key>`, in declaration order."""
        if self.config_class is None:
            return []
        cls = self.load_config_class()
        if self.options is not None:
            by_name = {f.name: f for f in dataclasses.fields(cls)}
            return [by_name[name] for name in self.options]
        from peft import PeftConfig

        inherited = {f.name for f in dataclasses.fields(PeftConfig)}
        return [f for f in dataclasses.fields(cls) if f.name not in inherited and f.name not in self.excluded]


_MOC = "moc_cli.tuner:MocConfig"
# Not offered in recipes: peft reads `target_parameters`; trainable tokens need a tokenizer that
# gained tokens, which only a TRL chat template does (docs/trl.md).
_MOC_EXCLUDED = ("target_parameters", "trainable_token_indices")
_LORA_OPTIONS = ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save")
# lora_alpha = 2r (r=8): the scale of 2 the LoRA baselines in the MoC paper's tables use.
_LORA_DEFAULTS = {"lora_alpha": 16}
_LORA_BOUNDS = {"r": {"gt": 0}, "lora_alpha": {"gt": 0}, "lora_dropout": {"ge": 0.0, "lt": 1.0}}

METHODS: Mapping[str, Method] = MappingProxyType(
    {
        m.name: m
        for m in (
            Method(
                name="moc",
                title="Mixture-of-Control (MoC)",
                summary="Mixture-of-Control: per-layer controls mixed through a sparse router.",
                config_class=_MOC,
                peft_type="MOC",
                excluded=_MOC_EXCLUDED,
                baseline=False,
                moc_family=True,
                no_merge_reason="its routing is input-dependent and its controls sit parallel to non-linear "
                "sub-blocks (attention, FFN), so there is no static weight delta to fold",
            ),
            Method(
                name="control",
                title="per-block Control (MoC without routing)",
                summary="Per-block Control baseline (MoC with global_control=false).",
                config_class=_MOC,
                peft_type="MOC",
                excluded=_MOC_EXCLUDED,
                implied=_frozen({"global_control": False}),
                moc_family=True,
                no_merge_reason="its controls sit parallel to non-linear sub-blocks (attention, FFN), so "
                "there is no static weight delta to fold",
            ),
            Method(
                name="lora",
                title="LoRA",
                summary="peft LoRA baseline.",
                config_class="peft:LoraConfig",
                peft_type="LORA",
                options=_LORA_OPTIONS,
                defaults=_frozen(_LORA_DEFAULTS),
                bounds=_frozen(_LORA_BOUNDS),
                mergeable=True,
            ),
            Method(
                name="dora",
                title="DoRA",
                summary="peft LoRA with use_dora=True (weight-decomposed LoRA).",
                config_class="peft:LoraConfig",
                peft_type="LORA",
                options=_LORA_OPTIONS,
                implied=_frozen({"use_dora": True}),
                defaults=_frozen(_LORA_DEFAULTS),
                bounds=_frozen(_LORA_BOUNDS),
                mergeable=True,
            ),
            Method(
                name="ia3",
                title="IA3",
                summary="peft IA3 baseline (learned activation rescaling).",
                config_class="peft:IA3Config",
                peft_type="IA3",
                options=("target_modules", "feedforward_modules", "modules_to_save"),
                mergeable=True,
            ),
            Method(
                name="full",
                title="full fine-tuning",
                summary="Full fine-tuning of every parameter (no adapter).",
                config_class=None,
                peft_type=None,
                mergeable=True,  # the saved model already is the merged model
            ),
            Method(
                name="molex",
                title="MoLEx (mixture of layer experts)",
                summary="MoLEx baseline: mixture of pretrained layer experts.",
                config_class="moc_cli.baselines:MolexConfig",
                peft_type="MOLEX",
                # target_modules is filled from layers_pattern; the other two are only read by peft.
                excluded=("target_modules", "target_parameters", "exclude_modules"),
                no_merge_reason="MoLEx mixes whole pretrained layers per input, so there is no static "
                "weight delta to fold",
            ),
        )
    }
)
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


class UnknownMethodError(ValueError):
    """`method.name` names no method of the table."""


def get_method(name: str) -> Method:
    """The table entry of `method.name`, or an error listing the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"method.name={name!r} is not a method; choose one of {', '.join(METHOD_NAMES)}"
        ) from None


def method_of_adapter(adapter_config: Mapping[str, Any]) -> str | None:
    """`method.name` of a saved adapter (its adapter_config.json), or None for an unknown peft type.

    Methods sharing a peft type are told apart by the values their name implies (`dora`: use_dora).
    """
    peft_type = str(adapter_config.get("peft_type") or "").upper()
    candidates = [m for m in METHODS.values() if m.peft_type == peft_type]
    for method in sorted(candidates, key=lambda m: -len(m.implied)):  # the most specific first
        if all(adapter_config.get(key) == value for key, value in method.implied.items()):
            return method.name
    return None
