"""The one machine/version collector behind `moc env`, a run's env.json, model cards and benchmarks."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import pytest

from moc_cli import environment

ROOT = Path(__file__).resolve().parents[1]


def test_versions_are_the_installed_ones_and_none_for_a_missing_distribution() -> None:
    found = environment.versions(("torch", "peft", "no-such-distribution-moc"))
    assert found == {
        "torch": importlib.metadata.version("torch"),
        "peft": importlib.metadata.version("peft"),
        "no-such-distribution-moc": None,
    }
    assert tuple(environment.versions()) == environment.CORE_DISTRIBUTIONS


def test_the_versions_line_leaves_out_what_is_not_installed() -> None:
    line = environment.versions_line(("torch", "no-such-distribution-moc"))
    assert line == f"Python {platform.python_version()}, torch {importlib.metadata.version('torch')}"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not running from a git checkout")
def test_git_sha_is_the_checkout_head() -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert environment.git_sha() == head
    assert environment.git_sha(short=True) == head[:12]
    marked = environment.git_sha(short=True, mark_dirty=True)
    assert marked in (head[:12], f"{head[:12]} (modified)")


def test_machine_info_records_the_threads_it_was_given_and_the_host() -> None:
    info = environment.machine_info(threads=3)
    assert info["torch_threads"] == 3
    assert info["logical_cpus"] == os.cpu_count()
    assert info["python"] == platform.python_version()
    assert info["torch"] == importlib.metadata.version("torch")
    assert info["cpu"] == environment.cpu_model() and info["cpu"]
    assert info["cuda"] is None or isinstance(info["cuda"], str)
    assert len(info["load_average_start"]) == 3
