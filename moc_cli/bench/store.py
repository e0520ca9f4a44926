"""The efficiency results store: `efficiency.json`, one record per (model, batch size, sequence length).

Several benchmark processes may share it: every write merges under an exclusive lock and replaces
the file atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from moc_cli.bench.errors import EfficiencyError
from moc_cli.bench.locks import file_lock

RESULTS_JSON = "efficiency.json"


def merge_runs(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New runs replace stored runs of the same model, batch size and sequence length that measured
    no more than they do: a timed run replaces both kinds (it also measures saved bytes and memory),
    a memory-only run replaces only a memory-only one."""

    def key(run: dict[str, Any]) -> tuple[str, int, int]:
        return (run["model"], run["batch_size"], run["seq_len"])

    def superseded(old: dict[str, Any]) -> bool:
        return any(key(r) == key(old) and (r["steps"] > 0 or old["steps"] == 0) for r in new)

    kept = [r for r in existing if not superseded(r)]
    return sorted([*kept, *new], key=lambda r: (r["model"], r["batch_size"], r["seq_len"], r["steps"] > 0))


def stored_run(store: Path, model: str, batch_size: int, seq_len: int, flag: str) -> dict[str, Any]:
    """The stored run of (model, batch size, sequence length); the timed one if there are two."""
    runs = [
        r
        for r in load_runs(store)
        if (r["model"], r["batch_size"], r["seq_len"]) == (model, batch_size, seq_len)
    ]
    if not runs:
        raise EfficiencyError(
            f"{flag}: {store} has no run of --model {model} --batch-size {batch_size} --seq-len {seq_len}; "
            f"run the benchmark without {flag} first"
        )
    return max(runs, key=lambda r: r["steps"] > 0)


def store_run(store: Path, run: dict[str, Any]) -> None:
    """Merge `run` into the store under an exclusive lock (several benchmark processes may share it)."""
    with file_lock(store.parent / (store.name + ".lock")):
        merged = merge_runs(load_runs(store), [run])
        tmp = store.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"runs": merged}, indent=1) + "\n")
        os.replace(tmp, store)


def load_runs(store: Path) -> list[dict[str, Any]]:
    return json.loads(store.read_text())["runs"] if store.exists() else []
