"""Refuse an adapter that does not fit a base model, before anything touches the base weights.

`PeftModel.from_pretrained` injects adapter layers into the base first and loads tensors after,
so a mismatch surfaces late, as a size-mismatch traceback, with the base already mutated (or, for
matching shapes on another architecture, not at all: silently wrong logits). This check reads only
`adapter_config.json` and the safetensors *header* of `adapter_model.safetensors`:

1. Architecture: the adapter's recorded base (`base_model_name_or_path`; its `config.json` when
   that is a local folder) against the base's `model_type` and hidden size, when both are known.
2. Structure: every saved per-module tensor must hang off a module the base has.
3. Shapes: the adapter config is applied with peft to a *meta-device* copy of the base (no memory,
   no real weights) and the resulting adapter state-dict shapes must equal the saved ones exactly.
   This is method-agnostic (LoRA, MoC, `modules_to_save` heads alike).

Every failure raises `AdapterMismatchError` naming both models.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from moc_cli.reliability.checkpoints import safetensors_header

logger = logging.getLogger(__name__)

_HIDDEN_SIZE_KEYS = ("hidden_size", "d_model", "n_embd", "dim")
_ADAPTER_PREFIX = "base_model.model."


class AdapterMismatchError(ValueError):
    """The adapter was trained on a different base model (names both sides)."""


def _hidden_size(config: Any) -> int | None:
    for key in _HIDDEN_SIZE_KEYS:
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _describe(name: str | None, model_type: str | None, hidden: int | None) -> str:
    shown = repr(name) if name else "an unnamed model"
    return f"{shown} (model_type={model_type or 'unknown'}, hidden_size={hidden if hidden is not None else 'unknown'})"


def _adapter_side(adapter_config: dict[str, Any]) -> tuple[str | None, str | None, int | None]:
    name = adapter_config.get("base_model_name_or_path")
    model_type = hidden = None
    if name and (Path(name) / "config.json").is_file():  # local bases only: never reach for the Hub
        try:
            base_cfg = json.loads((Path(name) / "config.json").read_text(encoding="utf-8"))
            model_type, hidden = base_cfg.get("model_type"), _hidden_size(base_cfg)
        except (OSError, json.JSONDecodeError):
            pass
    return name, model_type, hidden


def _meta_copy(base_model: torch.nn.Module) -> torch.nn.Module:
    config = getattr(base_model, "config", None)
    if config is not None:
        try:
            with torch.device("meta"):
                return type(base_model)(copy.deepcopy(config))
        except Exception as err:  # custom constructors: fall back to a copied structure
            logger.debug("meta construction from config failed (%s); copying the module", err)
    return copy.deepcopy(base_model).to("meta")


def expected_adapter_shapes(
    adapter_dir: str | os.PathLike[str], base_model: torch.nn.Module
) -> dict[str, tuple]:
    """Shapes of the tensors the adapter config would save for `base_model` (computed on meta)."""
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict

    import moc_cli  # noqa: F401  (registers the MoC tuner so its adapter_config.json resolves)

    peft_config = PeftConfig.from_pretrained(str(adapter_dir))
    peft_config.inference_mode = False
    meta_model = get_peft_model(_meta_copy(base_model), peft_config)
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(meta_model).items()}


def _missing_modules(saved: dict[str, tuple], base_model: torch.nn.Module) -> list[str]:
    modules = dict(base_model.named_modules())
    missing = []
    for key in saved:
        if not key.startswith(_ADAPTER_PREFIX):
            continue  # tuner-level containers (`base_model.moc_*`) are not attached to a base module
        head = key[len(_ADAPTER_PREFIX) :].split(".")[0]
        if head not in modules:
            missing.append(key)
    return missing


def check_adapter_compatible(adapter_dir: str | os.PathLike[str], base_model: torch.nn.Module) -> None:
    """Raise `AdapterMismatchError` unless the adapter in `adapter_dir` fits `base_model` exactly.

    Reads headers only; `base_model` is not modified. Also raises `FileNotFoundError` naming the
    file when `adapter_config.json` or `adapter_model.safetensors` is missing.
    """
    adapter_dir = Path(adapter_dir)
    config_path, weights_path = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    for required in (config_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(
                f"{required}: missing; an adapter folder needs adapter_config.json and adapter_model.safetensors"
            )
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    header = safetensors_header(weights_path)
    saved = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}

    base_cfg = getattr(base_model, "config", None)
    base_name = getattr(base_cfg, "name_or_path", None) or getattr(base_model, "name_or_path", None)
    base_type = getattr(base_cfg, "model_type", None)
    base_hidden = _hidden_size(base_cfg) if base_cfg is not None else None
    a_name, a_type, a_hidden = _adapter_side(adapter_config)
    intro = (
        f"Adapter {adapter_dir} was trained on {_describe(a_name, a_type, a_hidden)} and does not fit "
        f"the base model {_describe(base_name, base_type, base_hidden)}"
    )
    fix = (
        "Load it onto the base model it was trained on (see base_model_name_or_path in adapter_config.json)."
    )

    if a_type and base_type and a_type != base_type:
        raise AdapterMismatchError(f"{intro}: model_type {a_type} != {base_type}. {fix}")
    if a_hidden is not None and base_hidden is not None and a_hidden != base_hidden:
        raise AdapterMismatchError(f"{intro}: hidden_size {a_hidden} != {base_hidden}. {fix}")

    missing = _missing_modules(saved, base_model)
    if missing:
        raise AdapterMismatchError(
            f"{intro}: {len(missing)} saved tensors belong to modules the base lacks, e.g. {missing[0]}. {fix}"
        )

    try:
        expected = expected_adapter_shapes(adapter_dir, base_model)
    except (ValueError, KeyError) as err:  # peft: target modules absent, incompatible layer types
        raise AdapterMismatchError(
            f"{intro}: peft cannot apply its config to this base ({err}). {fix}"
        ) from err
    except Exception as err:  # a tuner that cannot build on meta: the checks above still hold
        logger.warning(
            "Skipping the exact shape check for %s (%s: %s).", adapter_dir, type(err).__name__, err
        )
        return

    diffs = [
        f"{k} saved {list(saved[k])} vs expected {list(expected[k])}"
        for k in sorted(saved)
        if k in expected and saved[k] != expected[k]
    ]
    unexpected = sorted(set(saved) - set(expected))
    absent = sorted(set(expected) - set(saved))
    if diffs:
        raise AdapterMismatchError(f"{intro}: {len(diffs)} tensor shapes differ, e.g. {diffs[0]}. {fix}")
    if unexpected:
        raise AdapterMismatchError(
            f"{intro}: {len(unexpected)} saved tensors have no place in this base, e.g. {unexpected[0]}. {fix}"
        )
    if absent:
        raise AdapterMismatchError(
            f"{intro}: {len(absent)} adapter tensors are missing from {weights_path.name}, e.g. {absent[0]}. {fix}"
        )
