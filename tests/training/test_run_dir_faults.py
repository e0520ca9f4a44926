"""Run-directory faults below the CLI: the run lock, leftovers of a failed start, default run folder
names, config changes on resume, and failed (disk-full) checkpoint writes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from moc_cli.training.checkpointing import (
    save_resumable_checkpoint,
    split_drift,
    write_failure_reason,
)
from moc_cli.training.errors import RunSetupError
from moc_cli.training.run_dir import (
    LOCK_NAME,
    RunDir,
    check_run_dir,
    holds_only_a_failed_start,
    latest_run_dir,
    new_run_dir,
    run_lock,
)

# ---------------------------------------------------------------- the run lock


def test_run_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with run_lock(root):
        holder = json.loads((root / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        # flock locks belong to open files: a second open in this very process conflicts too.
        with pytest.raises(RunSetupError) as info, run_lock(root):
            pass
        assert (
            f"output directory {root} is in use by another run (pid {os.getpid()} on {socket.gethostname()}, "
            f"started {holder['started']}: {holder['command']}); wait for it to finish, or choose another "
            "output.dir"
        ) in str(info.value)
        # The lock file does not make the folder "not empty".
        assert check_run_dir(root, overwrite=False, resuming=False).root == root
    assert not (root / LOCK_NAME).exists()
    with run_lock(root):  # free again
        pass


def test_a_lock_file_left_by_a_killed_run_does_not_block(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    (root / LOCK_NAME).write_text('{"pid": 1, "host": "gone", "started": "then", "command": "moc train"}')
    with run_lock(root):
        assert json.loads((root / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_only_the_main_process_of_a_launch_takes_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "run"
    with run_lock(root):
        monkeypatch.setenv("RANK", "1")
        with run_lock(root):  # rank 1 of the same launch: no lock of its own
            pass


# ---------------------------------------------------------------- leftovers of a failed start


def test_leftovers_of_a_run_without_checkpoints_are_not_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.make()
    run.config.write_text("seed: 42\n")
    run.env.write_text("{}\n")
    run.metrics.write_text('{"step": 1, "kind": "train", "loss": 0.7}\n')
    assert holds_only_a_failed_start(run)
    assert check_run_dir(run.root, overwrite=False, resuming=False) == run


@pytest.mark.parametrize(
    "extra",
    ["checkpoints/checkpoint-2/trainer_state.json", "checkpoints/superseded/x", "adapter/a", "notes.txt"],
)
def test_anything_beyond_a_failed_start_is_still_refused(tmp_path: Path, extra: str) -> None:
    run = RunDir(tmp_path / "run")
    run.make()
    run.config.write_text("seed: 42\n")
    (run.root / extra).parent.mkdir(parents=True, exist_ok=True)
    (run.root / extra).write_text("x")
    assert not holds_only_a_failed_start(run)
    with pytest.raises(RunSetupError, match="is not empty; pass --overwrite"):
        check_run_dir(run.root, overwrite=False, resuming=False)


# ---------------------------------------------------------------- default run folders


def test_new_run_dirs_are_unique_within_a_second_and_the_newest_is_found(tmp_path: Path) -> None:
    base = tmp_path / "runs" / "glue" / "sst2"
    made = [new_run_dir(base) for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)
    assert latest_run_dir(base) == made[-1]
    (base / "20991231-235959-9").mkdir()
    (base / "20991231-235959-10").mkdir()
    (base / "notes").mkdir()
    assert latest_run_dir(base) == base / "20991231-235959-10"
    assert latest_run_dir(tmp_path / "nowhere") is None


# ---------------------------------------------------------------- config changes on resume


def test_split_drift_refuses_the_experiment_and_applies_the_cadence() -> None:
    saved = {
        "seed": 42,
        "recipe": "glue/sst2",
        "model": {"name_or_path": "m"},
        "method": {"name": "moc", "r": 16},
        "training": {"learning_rate": 3e-4, "max_steps": 8, "eval_steps": 4, "warmup_steps": 0.06},
        "output": {"dir": "runs/a", "progress": "auto"},
    }
    current = {
        **saved,
        "method": {"name": "moc", "r": 4},
        "training": {"learning_rate": 1e-3, "max_steps": 12, "eval_steps": 2, "warmup_steps": 0.06},
        "output": {"dir": "runs/b", "progress": "plain"},
    }
    refused, applied = split_drift(saved, current)
    assert refused == ["method.r: 16 -> 4", "training.learning_rate: 0.0003 -> 0.001"]
    assert applied == ["training.eval_steps: 4 -> 2", "training.max_steps: 8 -> 12"]


# ---------------------------------------------------------------- failed writes


@pytest.mark.parametrize(
    "exc, reason",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
        (
            RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
            "no space left on device",
        ),
        (
            RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1536 vs 1444"),
            "writing the file failed (the disk is probably full)",
        ),
        (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
        (RuntimeError("CUDA out of memory"), None),
        (ValueError("bad"), None),
    ],
)
def test_write_failure_reason(exc: BaseException, reason: str | None) -> None:
    assert write_failure_reason(exc) == reason
    try:
        raise RuntimeError("while saving") from exc
    except RuntimeError as wrapped:
        assert write_failure_reason(wrapped) == reason


def _fake_trainer(step: int) -> SimpleNamespace:
    """Enough of a Trainer for `save_resumable_checkpoint`: a real optimizer, scheduler and state."""
    from safetensors.torch import save_file
    from transformers import TrainerState

    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.ones(2)
    optimizer.step()

    def save_model(path: str) -> None:
        save_file({"w": weight.detach().clone()}, str(Path(path) / "adapter_model.safetensors"))

    return SimpleNamespace(
        state=TrainerState(global_step=step),
        optimizer=optimizer,
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        is_world_process_zero=lambda: True,
        save_model=save_model,
    )


def test_disk_full_during_an_interrupt_save_leaves_nothing_resume_could_pick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moc_cli.reliability.checkpoints import find_resume_checkpoint

    checkpoints = tmp_path / "checkpoints"
    earlier = save_resumable_checkpoint(_fake_trainer(2), checkpoints)
    assert earlier == checkpoints / "checkpoint-2"

    real_save = torch.save

    def disk_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if str(f).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1536 vs 1444")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(RuntimeError, match="enforce fail"):
        save_resumable_checkpoint(_fake_trainer(3), checkpoints)
    # No half-written checkpoint-3 nor its temporary folder; resume takes checkpoint-2.
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]
    assert find_resume_checkpoint(checkpoints) == earlier


def test_an_incomplete_trainer_checkpoint_is_never_picked_by_resume(tmp_path: Path) -> None:
    """Trainer writes checkpoint-N in place: a full disk mid-save leaves a folder without the
    completion marker (and with a missing or truncated file), which `--resume auto` skips."""
    from moc_cli.reliability.checkpoints import find_resume_checkpoint

    checkpoints = tmp_path / "checkpoints"
    earlier = save_resumable_checkpoint(_fake_trainer(2), checkpoints)
    partial = checkpoints / "checkpoint-4"
    partial.mkdir()
    shutil.copy(earlier / "adapter_model.safetensors", partial)  # weights written, then the disk filled up
    (partial / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    assert find_resume_checkpoint(checkpoints) == earlier
