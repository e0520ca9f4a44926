"""Fixtures for the TRL tests (skipped without the optional `trl` extra)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # HF offline flags: tests/conftest.py

import pytest  # noqa: E402

pytest.importorskip("trl", reason="trl is an optional extra: pip install -e '.[trl]'")

from trl_helpers import chat_tokenizer  # noqa: E402


@pytest.fixture
def tokenizer():
    return chat_tokenizer()
