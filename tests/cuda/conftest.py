"""CUDA checks (`pytest -m cuda`): run on a GPU by `bash scripts/device_check.sh`, skipped elsewhere.

`MOC_CUDA_TEST_DEVICE=cpu` runs the same tests on the CPU: `scripts/device_check.sh --smoke` does
that, so the checks cannot rot while no GPU is lent.
"""

from __future__ import annotations

import os

import pytest
import torch


def cuda_test_device() -> torch.device | None:
    """The device the CUDA checks run on, or None (skip): CUDA, or the CPU when asked for a smoke run."""
    chosen = os.environ.get("MOC_CUDA_TEST_DEVICE")
    if chosen:
        return torch.device(chosen)
    return torch.device("cuda") if torch.cuda.is_available() else None


@pytest.fixture
def device() -> torch.device:
    found = cuda_test_device()
    if found is None:
        pytest.skip("no CUDA device (bash scripts/device_check.sh runs these on a GPU)")
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cuda/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.cuda)
