"""Run directory policy: overwrite refusal, resume errors, atomic replacement, config drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from moc_cli.atomic_dir import replace_dir, temp_dir_beside
from moc_cli.training.checkpointing import config_drift
from moc_cli.training.errors import RunSetupError
from moc_cli.training.run_dir import RunDir, check_run_dir, clear_run_dir
from moc_cli.training.run_root import resume_checkpoint


def make_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_refuses_non_empty_dir_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(RunSetupError) as info:
        check_run_dir(tmp_path, overwrite=False, resuming=False)
    assert str(info.value) == (
        "invalid config (1 error):\n"
        f"  - output directory {tmp_path} is not empty; pass --overwrite (output.overwrite=true) to replace it, "
        "--resume auto to continue it, or choose another output.dir"
    )


def test_refuses_a_file_as_run_dir(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("x")
    with pytest.raises(RunSetupError, match=f"output.dir {tmp_path / 'run'} exists and is not a directory"):
        check_run_dir(tmp_path / "run", overwrite=True, resuming=False)


def test_empty_or_missing_dirs_are_fine(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert check_run_dir(tmp_path / "empty", overwrite=False, resuming=False).root == tmp_path / "empty"
    run = check_run_dir(tmp_path / "new" / "run", overwrite=False, resuming=False)
    assert not run.root.exists()  # created only once the model and data have loaded
    run.make()
    assert sorted(p.name for p in run.root.iterdir()) == ["checkpoints", "eval", "logs", "plots"]


def test_overwrite_is_checked_read_only_then_clears_only_run_entries(tmp_path: Path) -> None:
    for name in ("checkpoints", "adapter", "logs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    (tmp_path / "config.yaml").write_text("x")
    (tmp_path / "notes.md").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    run = check_run_dir(tmp_path, overwrite=True, resuming=False)
    # Every process of a launch runs the check; only the main process clears, later.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    clear_run_dir(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]


def test_resuming_keeps_the_dir(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("x")
    check_run_dir(tmp_path, overwrite=False, resuming=True)
    assert (tmp_path / "config.yaml").read_text() == "x"


def test_resume_errors_are_setup_errors(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert resume_checkpoint(None, run) is None
    with pytest.raises(
        RunSetupError, match=r"--resume auto found no usable checkpoint in .*/run/checkpoints; "
    ):
        resume_checkpoint("auto", run)
    # Only a damaged checkpoint: skipped by auto (which then finds nothing), named when given.
    damaged = make_checkpoint(run.checkpoints, 8)
    with pytest.raises(RunSetupError, match="--resume auto found no usable checkpoint"):
        resume_checkpoint("auto", run)
    with pytest.raises(RunSetupError) as info:
        resume_checkpoint(str(damaged), run)
    assert f"--resume {damaged}: checkpoint is damaged: " in str(info.value)
    assert "adapter_model.safetensors: truncated safetensors file (1 bytes; " in str(info.value)
    assert "optimizer.pt: missing" in str(info.value)


def test_replace_dir_swaps_complete_directories(tmp_path: Path) -> None:
    final = tmp_path / "adapter"
    final.mkdir()
    (final / "old").write_text("old")
    tmp = temp_dir_beside(final)
    assert tmp.parent == tmp_path and tmp.name.startswith(".adapter.partial-")
    (tmp / "new").write_text("new")
    replace_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_config_drift_lists_changed_keys() -> None:
    saved = {
        "seed": 42,
        "training": {"max_steps": 8, "num_train_epochs": 3.0},
        "method": {"name": "moc", "r": 16},
    }
    same = {
        "seed": 42,
        "training": {"max_steps": 8, "num_train_epochs": 3.0},
        "method": {"name": "moc", "r": 16},
    }
    assert config_drift(saved, same) == []
    changed = {
        "seed": 1,
        "training": {"max_steps": 10, "num_train_epochs": 3.0},
        "method": {"name": "moc", "r": 8},
    }
    # One line per changed leaf (not whole sections), the keys a resume cannot change first.
    assert config_drift(saved, changed) == [
        "method.r: 16 -> 8",
        "seed: 42 -> 1",
        "training.max_steps: 8 -> 10",
    ]
