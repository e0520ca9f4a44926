"""Shared fixtures for the reliability tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_helpers import run_trainer


@pytest.fixture(scope="session")
def pristine_run(tmp_path_factory) -> Path:
    """checkpoints/checkpoint-2 and checkpoint-4 from a real Trainer run with completion markers."""
    from moc_cli.reliability.checkpoints import AtomicCheckpointCallback

    out = tmp_path_factory.mktemp("pristine") / "checkpoints"
    run_trainer(out, [AtomicCheckpointCallback()])
    return out


@pytest.fixture
def run_copy(pristine_run: Path, tmp_path: Path) -> Callable[[], Path]:
    def _copy() -> Path:
        target = tmp_path / "checkpoints"
        shutil.copytree(pristine_run, target)
        return target

    return _copy
