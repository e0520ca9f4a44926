"""Safetensors state dicts written shard by shard, with the transformers index format for large models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def _unique_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without aliases: tied tensors (e.g. LM head = embeddings) are stored once.

    Returns (tensors by name, alias -> stored name). The tensors are the module's own storage, so
    no copy of the model is made here.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], str], str] = {}
    for name, tensor in module.state_dict(keep_vars=False).items():
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            str(tensor.dtype),
        )
        if tensor.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor
    return tensors, aliases


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> Iterator[list[str]]:
    shard: list[str] = []
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_bytes:
            yield shard
            shard, size = [], 0
        shard.append(name)
        size += nbytes
    if shard:
        yield shard


def save_state(
    module: nn.Module, folder: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> dict[str, str]:
    """Write the module's weights to `folder`; returns the tied-weight aliases that were not stored.

    Only one shard's contiguous copies exist at a time, so peak extra memory is one shard.
    """
    from safetensors.torch import save_file

    tensors, aliases = _unique_state(module)
    groups = list(_shards(tensors, max_shard_bytes))
    metadata = {"format": "pt"}
    if len(groups) == 1:
        save_file(
            {n: tensors[n].detach().contiguous() for n in groups[0]}, str(folder / SINGLE_FILE), metadata
        )
        return aliases
    weight_map: dict[str, str] = {}
    total = 0
    for i, names in enumerate(groups, start=1):
        filename = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        shard = {n: tensors[n].detach().contiguous() for n in names}
        total += sum(t.numel() * t.element_size() for t in shard.values())
        save_file(shard, str(folder / filename), metadata)
        del shard
        weight_map.update(dict.fromkeys(names, filename))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return aliases


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of an export folder (single file or the shards named by the index)."""
    if (folder / INDEX_FILE).is_file():
        index = json.loads((folder / INDEX_FILE).read_text())
        return [folder / name for name in sorted(set(index["weight_map"].values()))]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise FileNotFoundError(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def load_state(module: nn.Module, folder: Path, aliases: dict[str, str]) -> None:
    """Copy the stored weights into `module` shard by shard; every parameter must be accounted for."""
    from safetensors.torch import load_file

    expected = set(module.state_dict().keys())
    loaded: set[str] = set()
    for path in weight_files(folder):
        shard = load_file(str(path))
        unexpected = sorted(set(shard) - expected)
        if unexpected:
            raise ValueError(f"{path.name} holds weights the rebuilt model lacks: {unexpected[:5]}")
        module.load_state_dict(shard, strict=False)
        loaded.update(shard)
        del shard
    missing = sorted(expected - loaded - set(aliases))
    if missing:
        raise ValueError(f"export in {folder} lacks weights for: {missing[:5]}")
    state = module.state_dict()
    for alias, stored in aliases.items():
        # Ties the rebuilt model did not recreate itself get the stored values copied in.
        if alias in state and state[alias].data_ptr() != state[stored].data_ptr():
            state[alias].copy_(state[stored])
