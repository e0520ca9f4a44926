"""Measure the activation memory a training step keeps for backward.

`saved_tensor_bytes(fn, exclude=model.parameters())` runs `fn()` under
`torch.autograd.graph.saved_tensors_hooks` and sums the sizes of the *distinct storages* of all
tensors autograd saves (a view of `u` saved by two ops counts once), excluding storages that belong
to the given tensors (parameters and buffers: they live anyway). This is the "saved for backward"
number of docs/moc-method.md; it does not depend on the allocator and works on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SavedBytes:
    """Result of `saved_tensor_bytes`."""

    total_bytes: int  # distinct storages, excluded ones removed
    num_storages: int
    num_saved_tensors: int  # saved tensor references (before de-duplication)
    result: Any  # what `fn` returned (e.g. the loss), kept alive so nothing is freed early

    @property
    def megabytes(self) -> float:
        return self.total_bytes / 2**20


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    storage = t.untyped_storage()
    return (str(t.device), storage.data_ptr())


def saved_tensor_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> SavedBytes:
    """Run `fn()` (a forward pass building the graph) and measure the bytes saved for backward."""
    excluded = {_storage_key(t) for t in exclude if isinstance(t, torch.Tensor) and t.device.type != "meta"}
    storages: dict[tuple[str, int], int] = {}
    count = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        if t.device.type != "meta" and t.untyped_storage().data_ptr() != 0:
            key = _storage_key(t)
            if key not in excluded:
                storages[key] = max(storages.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return SavedBytes(
        total_bytes=sum(storages.values()), num_storages=len(storages), num_saved_tensors=count, result=result
    )
