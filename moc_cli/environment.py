"""What the running machine and its packages are: one collector for `moc env`, a run's env.json,
the exported model card and the benchmark records.

Only the standard library at import time; torch and psutil are imported where a value needs them.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

#: Distributions whose versions decide a run's numbers, in the order reports list them.
CORE_DISTRIBUTIONS = ("moc_cli", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors")

_SOURCE_TREE = Path(__file__).resolve().parents[1]


def version_of(dist: str) -> str | None:
    """The installed version of `dist`; for moc_cli run from an uninstalled checkout, its `__version__`."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        if dist == "moc_cli":
            import moc_cli

            return getattr(moc_cli, "__version__", None)
        return None


def versions(dists: tuple[str, ...] = CORE_DISTRIBUTIONS) -> dict[str, str | None]:
    """{distribution: version or None when it is not installed}."""
    return {dist: version_of(dist) for dist in dists}


def git_sha(short: bool = False, mark_dirty: bool = False) -> str | None:
    """The commit of the moc_cli source tree when it runs from a git checkout, else None.

    `mark_dirty` appends " (modified)" when tracked files differ from that commit.
    """
    if not (_SOURCE_TREE / ".git").exists():
        return None
    args = ["rev-parse", "--short=12", "HEAD"] if short else ["rev-parse", "HEAD"]
    sha = _git(*args)
    if sha is None or not mark_dirty:
        return sha
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{sha}{' (modified)' if dirty else ''}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(_SOURCE_TREE), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cuda_devices() -> list[str]:
    """Names of the visible CUDA devices (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def machine_info(threads: int) -> dict[str, Any]:
    """The machine a benchmark ran on, stored beside its numbers so figures from different hosts are
    never compared silently."""
    import psutil

    devices = cuda_devices()
    found = versions(("torch", "transformers", "peft"))
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cuda": devices[0] if devices else None,
        "torch_threads": threads,
        "python": platform.python_version(),
        **found,
        "load_average_start": list(os.getloadavg()),
    }


def versions_line(
    dists: tuple[str, ...] = ("moc_cli", "torch", "transformers", "peft", "safetensors"),
) -> str:
    """ "Python 3.11.9, moc_cli 0.4.0, torch 2.5.1, ..." for a model card; missing distributions are left out."""
    parts = [f"Python {platform.python_version()}"]
    parts += [f"{dist} {version}" for dist, version in versions(dists).items() if version is not None]
    return ", ".join(parts)
