"""Suite-wide settings: offline Hugging Face stack, deterministic single-thread torch, shared data."""

from __future__ import annotations

import os
from pathlib import Path

# Before any test imports transformers/datasets: the Hub is never contacted by the test suite.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`../shared` next to the repository (real data and docs); overridable with MOC_SHARED_DIR."""
    return Path(os.environ.get("MOC_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = shared_dir() / "data"
    if not data.is_dir():
        pytest.skip(f"real benchmark data not found at {data} (set MOC_SHARED_DIR); it exists in CI")
    return data


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("MOC_TEST_THREADS", "1")))
