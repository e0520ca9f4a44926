"""Build an export in a temporary sibling directory and move it into place only when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_TAG = ".partial-"


def remove_stale_partials(target: Path) -> None:
    """Delete leftovers of killed exports of `target` (a crash can only leave these hidden dirs)."""
    if target.parent.is_dir():
        for leftover in target.parent.glob(f".{target.name}{PARTIAL_TAG}*"):
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty work dir; on success it replaces `target` (old contents removed), on error it is deleted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL_TAG}", dir=target.parent))
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if target.exists():
        # rename(2) cannot replace a non-empty directory: move the old one aside first.
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(work, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, target)
