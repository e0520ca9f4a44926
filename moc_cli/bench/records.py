"""The accuracy study's results store: finished cells appended to `accuracy.jsonl`, failed ones to
`accuracy-failures.jsonl`, and the OS file locks that let several processes share one queue.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moc_cli.bench.errors import AccuracyError
from moc_cli.bench.study import Cell

RESULTS_JSONL = "accuracy.jsonl"
FAILURES_JSONL = "accuracy-failures.jsonl"


def load_finished(store: Path) -> dict[str, dict[str, Any]]:
    """Finished cells by key (a truncated last line from an interrupted write is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    store = Path(store)
    if not store.exists():
        return done
    for line in store.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "key" in record:
            done.setdefault(record["key"], record)
    return done


def append_record(store: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line under an exclusive lock on the file itself (several workers append);
    a truncated last line (an interrupted write) is first closed off."""
    store = Path(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    with store.open("a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0, os.SEEK_END)
            prefix = b""
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    prefix = b"\n"
            fh.seek(0, os.SEEK_END)
            fh.write(prefix + json.dumps(record).encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def claim(work_dir: Path, cell: Cell) -> Iterator[bool]:
    """Yields whether this process holds the cell's lock (False: another process is running it).

    An OS file lock rather than a marker file, so a killed worker never leaves a stale claim.
    Without `fcntl` (Windows) every cell counts as claimed: run one process at a time there.
    """
    try:
        import fcntl
    except ImportError:
        yield True
        return
    locks = Path(work_dir) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"{cell.slug}.lock"
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)


def merge_records(store: Path, sources: Sequence[Path]) -> int:
    """Append the cells of other `accuracy.jsonl` files that `store` lacks; returns how many."""
    added = 0
    for source in sources:
        if not Path(source).is_file():
            raise AccuracyError(
                f"--merge {source}: no such file; pass an accuracy.jsonl written by this benchmark"
            )
        have = load_finished(store)
        for key, record in load_finished(Path(source)).items():
            if key not in have:
                append_record(store, record)
                have[key] = record
                added += 1
    return added
