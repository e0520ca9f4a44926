"""The `bundle` format: base + control weights in safetensors, one config.json, tokenizer, model card.

`config.json` is the base model's config plus a `moc_export` entry holding the adapter's peft config,
the task head class, the dtype and the tied-weight aliases: everything `load_exported` needs to
rebuild the module tree before loading the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moc_cli.export.errors import ExportError
from moc_cli.export.weights import DEFAULT_MAX_SHARD_BYTES, load_state, save_state

if TYPE_CHECKING:
    from torch import nn

EXPORT_KEY = "moc_export"
MANIFEST = "moc_export.json"


def write_bundle(
    model: nn.Module,
    config: Any,
    tokenizer: Any,
    folder: Path,
    meta: dict[str, Any],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> None:
    """Write the unwrapped model (controls in place) to `folder`."""
    aliases = save_state(model, folder, max_shard_bytes)
    config_dict = config.to_dict()
    config_dict[EXPORT_KEY] = {**meta, "format": "bundle", "tied_weights": aliases}
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(folder))


# ---------------------------------------------------------------- damaged files

# A damaged file is not a usage error: exit code 1, with the file named and how to get a good copy.
DAMAGED_EXIT_CODE = 1
_REEXPORT = "re-create the export with `moc merge-export RUN_DIR --force`"
_RETRAIN = "restore the file from a checkpoint (checkpoints/checkpoint-N holds the same files) or train again"


def damaged(file: Path, reason: str, fix: str) -> ExportError:
    """One line naming the damaged file, what is wrong with it and how to get a good copy."""
    return ExportError(f"{file}: damaged or incomplete ({reason}); {fix}", exit_code=DAMAGED_EXIT_CODE)


def _read_json(file: Path, fix: str) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise damaged(file, f"not valid JSON: {err}", fix) from None


def _check_safetensors(file: Path, fix: str) -> None:
    from moc_cli.reliability.checkpoints import safetensors_header

    try:
        safetensors_header(file)
    except (OSError, ValueError) as err:
        reason = str(err).removeprefix(f"{file.name}: ")
        raise damaged(file, reason, fix) from None


def check_export_files(path: Path) -> None:
    """Raise ExportError naming the first damaged file of an export (JSON or safetensors)."""
    from moc_cli.export.weights import INDEX_FILE, SINGLE_FILE

    for name in (MANIFEST, "config.json", "tokenizer.json", "tokenizer_config.json", INDEX_FILE):
        if (path / name).is_file():
            _read_json(path / name, _REEXPORT)
    if (path / INDEX_FILE).is_file():
        index = _read_json(path / INDEX_FILE, _REEXPORT)
        shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
    else:
        shards = [SINGLE_FILE] if (path / SINGLE_FILE).is_file() else []
    for shard in shards:
        if not (path / shard).is_file():
            raise damaged(path / shard, "missing", _REEXPORT)
        _check_safetensors(path / shard, _REEXPORT)


def check_adapter_files(adapter_dir: Path) -> None:
    """Raise ExportError naming a damaged adapter_config.json or adapter_model.safetensors.

    Loaders call this before peft reads the adapter, whose own errors are tracebacks that do not
    name the file.
    """
    config = adapter_dir / "adapter_config.json"
    if config.is_file():
        _read_json(config, _RETRAIN)
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        _check_safetensors(weights, _RETRAIN)


def read_manifest(path: Path) -> dict[str, Any]:
    """The export's manifest (written last, so its presence marks a complete export)."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ExportError(
            f"{path} has no {MANIFEST}, so it is not a moc_cli export; create one with `moc merge-export RUN_DIR`"
        )
    data = _read_json(manifest, _REEXPORT)
    if not isinstance(data, dict):
        raise damaged(manifest, "not a JSON object", _REEXPORT)
    return data


def _bundle_meta(path: Path) -> dict[str, Any]:
    meta = _read_json(path / "config.json", _REEXPORT).get(EXPORT_KEY)
    if not isinstance(meta, dict):
        raise ExportError(f"{path / 'config.json'} lacks its {EXPORT_KEY!r} entry; re-export with --force")
    return meta


def _torch_dtype(name: str | None) -> Any:
    import torch

    if not name:
        return None
    value = getattr(torch, str(name).replace("torch.", ""), None)
    return value if isinstance(value, torch.dtype) else None


def _skip_random_init() -> Any:
    """Every base weight is overwritten from the bundle, so random init is wasted time on big models."""
    import contextlib

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def load_bundle(path: Path) -> nn.Module:
    """Rebuild the module tree from config.json, inject the controls, load the weights."""
    import transformers
    from transformers import AutoConfig

    from moc_cli.export.build import rebuild_unwrapped

    meta = _bundle_meta(path)
    config = AutoConfig.from_pretrained(str(path))
    if hasattr(config, EXPORT_KEY):
        delattr(config, EXPORT_KEY)
    auto = getattr(transformers, meta["auto_class"])
    kwargs: dict[str, Any] = {}
    dtype = _torch_dtype(meta.get("dtype"))
    if dtype is not None:
        kwargs["dtype"] = dtype
    if meta.get("attn_implementation"):
        kwargs["attn_implementation"] = meta["attn_implementation"]
    with _skip_random_init():
        model = auto.from_config(config, **kwargs)
    # Skipping init also skips tying (e.g. LM head = embeddings); tie as the config says.
    model.tie_weights()
    # No peft config: a fully fine-tuned model, stored as is.
    module = rebuild_unwrapped(model, meta["peft_config"]) if meta.get("peft_config") else model
    try:
        load_state(module, path, meta.get("tied_weights") or {})
    except ValueError as err:
        raise ExportError(f"{path}: {err}; re-create the export with `moc merge-export --force`") from None
    module.eval()
    return module


def load_exported(path: str | Path) -> nn.Module:
    """Load a `bundle` (controls in place, no peft wrapper) or `merged` export as an eval-mode module."""
    path = Path(path).expanduser()
    meta = read_manifest(path)
    check_export_files(path)  # a damaged file is named here, not by a traceback from safetensors
    fmt = meta.get("format")
    if fmt == "bundle":
        return load_bundle(path)
    if fmt == "merged":
        import transformers

        model = getattr(transformers, meta["auto_class"]).from_pretrained(str(path))
        model.eval()
        return model
    if fmt == "onnx":
        raise ExportError(
            f"{path} is an ONNX export; run it with onnxruntime.InferenceSession('{path / 'model.onnx'}'), "
            "or export --format bundle for a PyTorch module"
        )
    raise ExportError(f"{path / MANIFEST} names unknown export format {fmt!r}")
