"""The run directory: layout, overwrite policy, lock, resolved config, environment record, atomic writes.

Checkpoint validation and resume selection live in `moc_cli.reliability.checkpoints`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from moc_cli.environment import cuda_devices, git_sha, versions
from moc_cli.training.errors import RunSetupError

# Everything a run writes at the top level of its directory; `--overwrite` removes only these.
RUN_DIR_ENTRIES = ("config.yaml", "env.json", "checkpoints", "adapter", "logs", "eval", "plots", "export")
# Held (flock) by the run writing the folder; removed when it ends, ignored by the emptiness checks.
LOCK_NAME = ".moc-train.lock"
# Default run folders: <base>/<YYYYmmdd-HHMMSS>, with -2, -3, ... for runs started in the same second.
RUN_NAME_FORMAT = "%Y%m%d-%H%M%S"
_RUN_NAME_RE = re.compile(r"^\d{8}-\d{6}(-\d+)?$")


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.logs / "metrics.jsonl"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def results(self) -> Path:
        return self.eval / "results.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def make(self) -> None:
        for path in (self.root, self.checkpoints, self.logs, self.eval, self.plots):
            path.mkdir(parents=True, exist_ok=True)


def _entries(root: Path) -> list[Path]:
    """The folder's entries, without the run lock."""
    return [p for p in root.iterdir() if p.name != LOCK_NAME] if root.is_dir() else []


def holds_only_a_failed_start(run: RunDir) -> bool:
    """True when the folder holds nothing but what a run writes before its first checkpoint.

    A run that failed (or was stopped) before saving anything leaves config.yaml, env.json and
    empty or log-only folders. Nothing there can be resumed or lost, so the same command may simply
    run again instead of being refused as "not empty".
    """
    entries = _entries(run.root)
    if not entries or any(p.name not in RUN_DIR_ENTRIES for p in entries):
        return False
    if any(p.exists() for p in (run.adapter, run.root / "export", run.results)):
        return False
    # Checkpoints (also ones moved to superseded/), samples or plots mean the run got further.
    return not any(_entries(folder) for folder in (run.checkpoints, run.eval, run.plots))


def check_run_dir(root: Path, overwrite: bool, resuming: bool) -> RunDir:
    """The run dir at `root`; refuse a non-empty one unless resuming or `overwrite`.

    A folder left by a run that stopped before its first checkpoint (`holds_only_a_failed_start`)
    is not refused: the runner clears it and starts again.

    Read-only, so every process of a distributed launch runs it and fails the same way before
    anything heavy loads. Only the main process clears (`clear_run_dir`) and creates folders.
    """
    run = RunDir(Path(root))
    if run.root.exists() and not run.root.is_dir():
        raise RunSetupError(f"output.dir {run.root} exists and is not a directory; choose another output.dir")
    if _entries(run.root) and not resuming and not overwrite and not holds_only_a_failed_start(run):
        raise RunSetupError(
            f"output directory {run.root} is not empty; pass --overwrite (output.overwrite=true) to "
            "replace it, --resume auto to continue it, or choose another output.dir"
        )
    return run


def clear_run_dir(run: RunDir) -> None:
    """Remove what an earlier run wrote (`--overwrite`); other files in the folder are kept."""
    for name in RUN_DIR_ENTRIES:
        path = run.root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def is_main_launch_process() -> bool:
    """Rank 0 of a launch (torchrun/accelerate set RANK), or a plain single process."""
    return os.environ.get("RANK", "0") in ("", "0")


def _launch_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


def new_run_dir(base: Path) -> Path:
    """A new, unique timestamped run folder under `base` (`<base>/20260101-120000`).

    A single process claims the name by creating the folder (so two runs started in the same second
    get `...-2`). The processes of a multi-process launch must agree without talking to each other
    yet: they name the folder after the start time of their common launcher process.
    """
    import time

    if _launch_world_size() > 1:
        try:
            import psutil

            started = psutil.Process(os.getppid()).create_time()
        except Exception:  # no launcher information: the ranks' own clocks, to the second
            started = time.time()
        return base / time.strftime(RUN_NAME_FORMAT, time.localtime(started))
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime(RUN_NAME_FORMAT)
    for suffix in range(1, 1000):
        candidate = base / (stamp if suffix == 1 else f"{stamp}-{suffix}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RunSetupError(f"could not find a free run folder name under {base}; choose an output.dir")


def latest_run_dir(base: Path) -> Path | None:
    """The newest timestamped run folder under `base` (what `--resume auto` continues), else None."""
    if not base.is_dir():
        return None
    runs = [p for p in base.iterdir() if p.is_dir() and _RUN_NAME_RE.match(p.name)]

    def order(path: Path) -> tuple[str, int]:  # 20260101-120000-10 after 20260101-120000-9
        return path.name[:15], int(path.name[16:] or 1)

    return max(runs, key=order) if runs else None


def _command_line() -> str:
    if not sys.argv:
        return ""
    head = Path(sys.argv[0]).name
    head = "python -m moc_cli" if head == "__main__.py" else head
    return " ".join([head, *sys.argv[1:]])


def _holder_description(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not recorded yet"


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder `root` (created if needed) for the whole block.

    A second run into the same folder is refused with a RunSetupError naming the run that holds
    it (pid, host, start time, command). The kernel releases the lock when its process dies, so a
    killed run never blocks its successor. Only the main process of a launch takes the lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    if not is_main_launch_process():
        yield
        return
    path = Path(root) / LOCK_NAME
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunSetupError(
                    f"output directory {root} is in use by another run ({_holder_description(path)}); "
                    "wait for it to finish, or choose another output.dir"
                ) from None
            # The holder before us may have removed the file between our open and our lock: then we
            # locked an orphan, and must lock the file now at `path` instead.
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)
    except PermissionError as exc:
        raise RunSetupError(
            f"cannot write to the output directory {root} ({exc.strerror}); "
            "choose a writable folder with --output-dir DIR or fix its permissions",
            "output.dir",
        ) from None
    except OSError as exc:  # e.g. a read-only file system
        raise RunSetupError(
            f"cannot write to the output directory {root} ({exc.strerror or exc}); "
            "choose a writable folder with --output-dir DIR",
            "output.dir",
        ) from None
    try:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": _command_line(),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode("utf-8"))
        yield
    finally:
        # Removed while still held, so no other run can lock this (now nameless) file afterwards.
        path.unlink(missing_ok=True)
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def environment_record(seed: int | None, provenance: dict[str, str] | None) -> dict[str, Any]:
    """Versions, git sha, seed and command line: what a bug report or a reproduction needs."""
    import torch

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "seed": seed,
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "devices": cuda_devices(),
        "provenance": dict(provenance or {}),
    }
