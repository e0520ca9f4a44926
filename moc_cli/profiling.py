"""Measure the activation memory a training step keeps for backward.

`saved_tensor_bytes(fn, exclude=model.parameters())` runs `fn()` under
`torch.autograd.graph.saved_tensors_hooks` and sums the sizes of the *distinct storages* of all
tensors autograd saves (a view of `u` saved by two ops counts once), excluding storages that belong
to the given tensors (parameters and buffers: they live anyway). Only storages still alive when
`fn()` returns count: a graph built and dropped during the forward (e.g. DoRA's detached weight
norm) frees what it saved, and the allocator may hand that address to a later tensor. This is the
"saved for backward" number of docs/moc-method.md; it does not depend on the allocator and works
on CPU. On the meta device (shapes only, no memory) it gives the same figure, which is how `moc
validate --estimate-memory` measures a model it has not loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef


@dataclass(frozen=True)
class SavedBytes:
    """Result of `saved_tensor_bytes`."""

    total_bytes: int  # distinct storages, excluded ones removed
    num_storages: int  # distinct storages still alive at the end of the forward
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
    # storage key -> (weak reference, bytes); a key whose storage died was a freed address reused
    storages: dict[tuple[str, int], tuple[StorageWeakRef, int]] = {}
    count = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        storage = t.untyped_storage()
        if t.device.type == "meta" or storage.data_ptr() != 0:
            key = _storage_key(t)
            if key not in excluded:
                known = storages.get(key)
                if known is None or known[0].expired():
                    storages[key] = (StorageWeakRef(storage), storage.nbytes())
                else:
                    storages[key] = (known[0], max(known[1], storage.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    alive = [nbytes for ref, nbytes in storages.values() if not ref.expired()]
    return SavedBytes(total_bytes=sum(alive), num_storages=len(alive), num_saved_tensors=count, result=result)
