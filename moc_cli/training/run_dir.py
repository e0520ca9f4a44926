"""The run directory: layout, overwrite policy, resolved config, environment record, atomic writes.

Checkpoint validation and resume selection live in `moc_cli.reliability.checkpoints`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from moc_cli.training.errors import RunSetupError

# Everything a run writes at the top level of its directory; `--overwrite` removes only these.
RUN_DIR_ENTRIES = ("config.yaml", "env.json", "checkpoints", "adapter", "logs", "eval", "plots", "export")


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


def check_run_dir(root: Path, overwrite: bool, resuming: bool) -> RunDir:
    """The run dir at `root`; refuse a non-empty one unless resuming or `overwrite`.

    Read-only, so every process of a distributed launch runs it and fails the same way before
    anything heavy loads. Only the main process clears (`clear_run_dir`) and creates folders.
    """
    run = RunDir(Path(root))
    if run.root.exists() and not run.root.is_dir():
        raise RunSetupError(f"output.dir {run.root} exists and is not a directory; choose another output.dir")
    if run.root.is_dir() and any(run.root.iterdir()) and not resuming and not overwrite:
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


def temp_dir_beside(final: Path) -> Path:
    """A fresh temporary directory in `final`'s parent (same filesystem, so `os.replace` is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a completed `tmp` directory to `final`, never leaving a half-written `final` behind."""
    old = None
    if final.exists():
        # rename() cannot replace a non-empty directory: move the old one aside first.
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _git_sha() -> str | None:
    """The commit of the moc_cli source tree, when it runs from a git checkout."""
    package_dir = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        if dist == "moc_cli":  # running from a source checkout that is not pip-installed
            import moc_cli

            return getattr(moc_cli, "__version__", None)
        return None


def environment_record(seed: int | None, provenance: dict[str, str] | None) -> dict[str, Any]:
    """Versions, git sha, seed and command line: what a bug report or a reproduction needs."""
    import torch

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "seed": seed,
        "git_sha": _git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            dist: version_of(dist)
            for dist in ("moc_cli", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors")
        },
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "provenance": dict(provenance or {}),
    }
