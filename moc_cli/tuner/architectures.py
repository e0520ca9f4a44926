"""Declarative architecture map: where MoC control sites read `u` and write `c(u)`.

An entry is plain data (serialisable, never live modules): the dotted path of the layer
`ModuleList`, and per site type a *writer* (the module whose output receives `+ c(u)`, path
relative to one layer; `""` = the layer itself) and a *reader* saying where `u` comes from:

- `arg:<index>:<name>`: an argument of the writer (post-LN blocks pass the residual `u` to their
  output sub-module as `input_tensor`);
- `tap:<path>`: the input of another module of the layer (pre-LN: the sub-block's norm, whose input
  is the residual state). A tap layer stashes that input for the writer of the same layer.

Checked against transformers 5.24 module trees:

| family | attn writer / reader | ffn writer / reader |
|---|---|---|
| BERT, RoBERTa, DeBERTa-v2 (post-LN) | `attention.output` / `arg:1:input_tensor` | `output` / `arg:1:input_tensor` |
| MPNet (post-LN) | `attention` / `arg:0:hidden_states` | `output` / `arg:1:input_tensor` |
| LLaMA, Mistral, Qwen2, Gemma (pre-LN) | `self_attn` / `tap:input_layernorm` | `mlp` / `tap:post_attention_layernorm` |
| GPT-2 (pre-LN) | `attn` / `tap:ln_1` | `mlp` / `tap:ln_2` |
| ViT (pre-LN) | `attention` / `tap:layernorm_before` | `mlp` / `tap:layernorm_after` |

ViT applies the layer's own dropout to the sub-block output after the writer, so the control
passes through that dropout too (it is part of the sub-block's residual branch; identity in eval).
The `block` site (`out = Layer(u) + c(u)`, `u` = the layer's first argument) needs only the layer
path, so it works for any model given `layers_pattern`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

BLOCK_SITE = {"writer": "", "reader": "arg:0:hidden_states"}

_POST_LN_BERT = {
    "layers": "encoder.layer",
    "sites": {
        "attn": {"writer": "attention.output", "reader": "arg:1:input_tensor"},
        "ffn": {"writer": "output", "reader": "arg:1:input_tensor"},
    },
}
_PRE_LN_LLAMA = {
    "layers": "layers",
    "sites": {
        "attn": {"writer": "self_attn", "reader": "tap:input_layernorm"},
        "ffn": {"writer": "mlp", "reader": "tap:post_attention_layernorm"},
    },
}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "bert": _POST_LN_BERT,
    "roberta": _POST_LN_BERT,
    "deberta-v2": _POST_LN_BERT,
    "mpnet": {
        "layers": "encoder.layer",
        "sites": {
            "attn": {"writer": "attention", "reader": "arg:0:hidden_states"},
            "ffn": {"writer": "output", "reader": "arg:1:input_tensor"},
        },
    },
    "llama": _PRE_LN_LLAMA,
    "mistral": _PRE_LN_LLAMA,
    "qwen2": _PRE_LN_LLAMA,
    "gemma": _PRE_LN_LLAMA,
    "gpt2": {
        "layers": "h",
        "sites": {
            "attn": {"writer": "attn", "reader": "tap:ln_1"},
            "ffn": {"writer": "mlp", "reader": "tap:ln_2"},
        },
    },
    "vit": {
        "layers": "layers",
        "sites": {
            "attn": {"writer": "attention", "reader": "tap:layernorm_before"},
            "ffn": {"writer": "mlp", "reader": "tap:layernorm_after"},
        },
    },
}

_READER_RE = re.compile(r"^(?:arg:(\d+):([A-Za-z_]\w*)|tap:([A-Za-z_][\w.]*))$")


@dataclass(frozen=True)
class SiteSpec:
    """Where one site reads `u` and writes `c(u)`, relative to a layer."""

    writer: str
    reader: str

    @property
    def tap(self) -> str | None:
        return self.reader[4:] if self.reader.startswith("tap:") else None

    @property
    def arg(self) -> tuple[int, str] | None:
        m = _READER_RE.match(self.reader)
        return (int(m.group(1)), m.group(2)) if m and m.group(1) is not None else None


@dataclass(frozen=True)
class ArchSpec:
    layers: str | None
    sites: dict[str, SiteSpec] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        if not isinstance(data, dict):
            raise ValueError(
                f"MocConfig.architecture={data!r} is invalid; allowed: a dict with 'layers' and 'sites'."
            )
        unknown = set(data) - {"layers", "sites"}
        if unknown:
            raise ValueError(
                f"MocConfig.architecture has unknown keys {sorted(unknown)}; allowed: layers, sites."
            )
        sites: dict[str, SiteSpec] = {}
        for name, site in (data.get("sites") or {}).items():
            if name not in ("attn", "ffn"):
                raise ValueError(f"MocConfig.architecture.sites key {name!r} is invalid; allowed: attn, ffn.")
            if not isinstance(site, dict) or set(site) != {"writer", "reader"}:
                raise ValueError(
                    f"MocConfig.architecture.sites.{name}={site!r} is invalid; allowed: {{'writer': path, 'reader': "
                    "'arg:<index>:<name>' or 'tap:<path>'}."
                )
            if not _READER_RE.match(str(site["reader"])):
                raise ValueError(
                    f"MocConfig.architecture.sites.{name}.reader={site['reader']!r} is invalid; allowed: "
                    "'arg:<index>:<name>' or 'tap:<path>'."
                )
            sites[name] = SiteSpec(writer=str(site["writer"]), reader=str(site["reader"]))
        layers = data.get("layers")
        if layers is not None and not isinstance(layers, str):
            raise ValueError(
                f"MocConfig.architecture.layers={layers!r} is invalid; allowed: a dotted module path."
            )
        return cls(layers=layers, sites=sites)


RoleKind = Literal["writer", "tap"]


@dataclass(frozen=True)
class Role:
    """What one targeted module does for MoC.

    - `kind="writer"`: its output receives `+ c(u)` for `site` (`MocSiteLayer` wraps it); `arg`
      says which of its arguments is `u`, or None when a tap supplies it.
    - `kind="tap"`: it only *reads*: its input is the `u` of a pre-LN site (the sub-block's norm
      sees the residual state before the writer runs), and `MocTapLayer` stashes that input for the
      writer of the same layer. Its output is untouched.

    `layer` is the controlled layer's index in the plan, which is also the index of that layer's
    own (local) expert in the pools.
    """

    kind: RoleKind
    site: str
    layer: int
    arg: tuple[int, str] | None = None


@dataclass
class Plan:
    """Resolved placement for one model: controlled layers (in order = expert order) and roles."""

    model_type: str
    layer_names: list[str]
    sites: tuple[str, ...]
    roles: dict[str, Role]
    hidden_size: int

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    candidates = [config]
    if config is not None and hasattr(config, "get_text_config"):
        candidates.append(config.get_text_config())
    for cfg in candidates:
        for attr in ("hidden_size", "n_embd", "d_model", "dim"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int):
                return value
    raise ValueError(
        "MoC could not read the hidden size from the model config (hidden_size, n_embd, d_model)."
    )


def _match_layers(model: nn.Module, layers_path: str) -> list[str]:
    pattern = re.compile(rf"^(?:.*\.)?{re.escape(layers_path)}\.(\d+)$")
    found: dict[str, list[tuple[int, str]]] = {}
    modules = dict(model.named_modules())
    for name in modules:
        m = pattern.match(name)
        if not m or ".base_layer" in name:
            continue
        parent = name.rsplit(".", 1)[0]
        if isinstance(modules.get(parent), nn.ModuleList):
            found.setdefault(parent, []).append((int(m.group(1)), name))
    if not found:
        raise ValueError(
            f"MoC found no ModuleList of layers at '{layers_path}' in {type(model).__name__}; set "
            "MocConfig.layers_pattern to the dotted path of the layer list (e.g. 'encoder.layer', 'layers', 'h')."
        )
    if len(found) > 1:
        raise ValueError(
            f"MoC found several layer lists matching '{layers_path}': {sorted(found)}; set MocConfig.layers_pattern "
            "to a longer dotted path that names exactly one."
        )
    ((_, layers),) = found.items()
    return [name for _, name in sorted(layers)]


def _layer_selected(config: Any, index: int, name: str) -> bool:
    if config.layers_to_transform is not None and index not in config.layers_to_transform:
        return False
    targets = config.target_modules
    if targets is None:
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def resolve_plan(model: nn.Module, config: Any) -> Plan:
    """Resolve which modules MoC wraps in `model` for `config` (a `MocConfig`)."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", None))
    if config.architecture is not None:
        spec = ArchSpec.from_dict(config.architecture)
        if spec.layers is None and model_type in ARCHITECTURES:
            spec = ArchSpec(layers=ARCHITECTURES[model_type]["layers"], sites=spec.sites)
    elif model_type in ARCHITECTURES:
        spec = ArchSpec.from_dict(ARCHITECTURES[model_type])
    else:
        spec = ArchSpec(layers=None)
    layers_path = config.layers_pattern or spec.layers
    sites = config.site_types
    missing = [s for s in sites if s != "block" and s not in spec.sites]
    if layers_path is None or missing:
        known = ", ".join(sorted(ARCHITECTURES))
        if layers_path is None:
            fix = "set MocConfig.layers_pattern to the dotted path of its layer ModuleList and use variant='block'"
        else:
            fix = "use variant='block', or pass MocConfig.architecture with the sites " + ", ".join(missing)
        raise ValueError(
            f"MoC has no architecture map for model_type '{model_type}' (variant '{config.variant}'); {fix}. "
            f"Mapped model types: {known}."
        )
    all_layers = _match_layers(model, layers_path)
    layer_names = [n for i, n in enumerate(all_layers) if _layer_selected(config, i, n)]
    if not layer_names:
        raise ValueError(
            f"MoC selected no layers: target_modules={config.target_modules!r}, layers_to_transform="
            f"{config.layers_to_transform!r} matched none of {len(all_layers)} layers ({all_layers[0]} ...)."
        )
    roles: dict[str, Role] = {}
    modules = dict(model.named_modules())
    for index, layer in enumerate(layer_names):
        for site in sites:
            s = SiteSpec(**BLOCK_SITE) if site == "block" else spec.sites[site]
            writer = f"{layer}.{s.writer}" if s.writer else layer
            if writer not in modules:
                raise ValueError(
                    f"MoC site '{site}' expects module '{writer}' (writer '{s.writer}') in model_type "
                    f"'{model_type}', which does not exist; fix MocConfig.architecture."
                )
            roles[writer] = Role("writer", site, index, s.arg)
            if s.tap is not None:
                tap = f"{layer}.{s.tap}"
                if tap not in modules:
                    raise ValueError(
                        f"MoC site '{site}' reads u at the input of '{tap}', which does not exist in model_type "
                        f"'{model_type}'; fix MocConfig.architecture."
                    )
                roles[tap] = Role("tap", site, index)
    return Plan(model_type, layer_names, sites, roles, _hidden_size(model))
