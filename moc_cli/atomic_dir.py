"""Replace a directory all at once: readers see the old folder or the complete new one, never a mix.

A new folder is written beside its target (same file system, so `os.replace` is atomic) and swapped
in when complete. The final adapter of a run, its checkpoints and every export are written this way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_TAG = ".partial-"


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the completed directory `tmp` to `final`, removing what `final` held before."""
    if not final.exists():
        os.replace(tmp, final)
        return
    # rename(2) cannot replace a non-empty directory: move the old one aside first.
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def temp_dir_beside(final: Path) -> Path:
    """A fresh hidden work directory in `final`'s parent (same file system, so `os.replace` is atomic);
    `remove_stale_partials(final)` deletes what a killed writer left of it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}{PARTIAL_TAG}", dir=final.parent))


def remove_stale_partials(target: Path) -> None:
    """Delete what killed `atomic_directory(target)` writers left (a crash can only leave these hidden dirs)."""
    if target.parent.is_dir():
        for leftover in target.parent.glob(f".{target.name}{PARTIAL_TAG}*"):
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty work dir beside `target`; on success it replaces `target`, on error it is deleted."""
    work = temp_dir_beside(target)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    replace_dir(work, target)
