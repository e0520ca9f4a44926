"""Measure the activation memory a training step keeps for backward.

`saved_tensor_bytes(fn, exclude=model.parameters())` runs `fn()` under
`torch.autograd.graph.saved_tensors_hooks` and sums the sizes of the *distinct storages* of all
tensors autograd saves (a view of `u` saved by two ops counts once), excluding storages that belong
to the given tensors (parameters and buffers: they live anyway). This is the "saved for backward"
number of docs/moc-method.md; it does not depend on the allocator and works on CPU. On the meta
device (shapes only, no memory) it gives the same figure, which is how `moc validate
--estimate-memory` measures a model it has not loaded.
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
    # Meta storages all have data pointer 0; the storage object's own address tells them apart
    # (views share it), and stays valid while `result` keeps the graph alive.
    return (str(t.device), storage._cdata if t.device.type == "meta" else storage.data_ptr())


def saved_tensor_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> SavedBytes:
    """Run `fn()` (a forward pass building the graph) and measure the bytes saved for backward."""
    excluded = {_storage_key(t) for t in exclude if isinstance(t, torch.Tensor)}
    storages: dict[tuple[str, int], int] = {}
    count = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        if t.device.type == "meta" or t.untyped_storage().data_ptr() != 0:
            key = _storage_key(t)
            if key not in excluded:
                storages[key] = max(storages.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return SavedBytes(
        total_bytes=sum(storages.values()), num_storages=len(storages), num_saved_tensors=count, result=result
    )
