"""Checkpoint validation, completion markers and resume selection on real Trainer checkpoints."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
from reliability_helpers import lora_model, run_trainer

from moc_cli.reliability.checkpoints import (
    MARKER_NAME,
    AtomicCheckpointCallback,
    CheckpointError,
    find_resume_checkpoint,
    resolve_resume,
    validate_checkpoint,
)

LOGGER = "moc_cli.reliability.checkpoints"


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _header_len(path: Path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_trainer_checkpoints_are_valid_and_marked(pristine_run: Path) -> None:
    names = sorted(p.name for p in pristine_run.iterdir())
    assert names == ["checkpoint-2", "checkpoint-4"]
    for ckpt in pristine_run.iterdir():
        assert validate_checkpoint(ckpt) == []
        manifest = json.loads((ckpt / MARKER_NAME).read_text())
        assert manifest["step"] == int(ckpt.name.split("-")[1])
        assert set(manifest["files"]) == {
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
            "optimizer.pt",
            "rng_state.pth",
            "scheduler.pt",
            "trainer_state.json",
            "training_args.bin",
        }
        assert (
            manifest["files"]["adapter_model.safetensors"]
            == (ckpt / "adapter_model.safetensors").stat().st_size
        )
    assert find_resume_checkpoint(pristine_run) == pristine_run / "checkpoint-4"


def test_truncated_safetensors_falls_back_with_exact_warning(run_copy, caplog) -> None:
    ckpts = run_copy()
    weights = ckpts / "checkpoint-4" / "adapter_model.safetensors"
    size, header_len = weights.stat().st_size, _header_len(weights)
    _truncate(weights, size - 100)
    data_len = size - 100 - 8 - header_len
    assert validate_checkpoint(ckpts / "checkpoint-4") == [
        f"adapter_model.safetensors: truncated (tensors need {size - 8 - header_len} bytes of data, the file holds {data_len})",
        f"adapter_model.safetensors: {size - 100} bytes, {size} recorded in .complete at save time",
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_resume_checkpoint(ckpts) == ckpts / "checkpoint-2"
    assert [r.getMessage() for r in caplog.records] == [
        f"Checkpoint {ckpts / 'checkpoint-4'} is not usable and is skipped: "
        f"adapter_model.safetensors: truncated (tensors need {size - 8 - header_len} bytes of data, the file holds {data_len}); "
        f"adapter_model.safetensors: {size - 100} bytes, {size} recorded in .complete at save time",
        "Resuming from checkpoint-2, the latest valid checkpoint (skipped: checkpoint-4).",
    ]


def test_truncated_safetensors_header(run_copy) -> None:
    ckpt = run_copy() / "checkpoint-4"
    weights = ckpt / "adapter_model.safetensors"
    header_len = _header_len(weights)
    _truncate(weights, 20)
    assert validate_checkpoint(ckpt)[0] == (
        f"adapter_model.safetensors: truncated safetensors header (declares {header_len} bytes, 12 follow)"
    )
    _truncate(weights, 3)
    assert validate_checkpoint(ckpt)[0] == (
        "adapter_model.safetensors: truncated safetensors file (3 bytes; the 8-byte header length is missing)"
    )


def test_garbage_safetensors_header(run_copy) -> None:
    ckpt = run_copy() / "checkpoint-4"
    weights = ckpt / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[8] = ord("#")  # the header JSON now starts with '#'
    weights.write_bytes(bytes(raw))
    assert validate_checkpoint(ckpt) == [
        "adapter_model.safetensors: unreadable safetensors header (Expecting value: line 1 column 1 (char 0))"
    ]


@pytest.mark.parametrize(
    ("victim", "problem"),
    [
        ("trainer_state.json", "trainer_state.json: missing"),
        ("optimizer.pt", "optimizer.pt: missing"),
        ("scheduler.pt", "scheduler.pt: missing"),
        (
            "adapter_model.safetensors",
            "adapter_model.safetensors (or model.safetensors for full fine-tuning): missing",
        ),
    ],
)
def test_missing_file(run_copy, caplog, victim: str, problem: str) -> None:
    ckpts = run_copy()
    (ckpts / "checkpoint-4" / victim).unlink()
    assert validate_checkpoint(ckpts / "checkpoint-4") == [
        problem,
        f"{victim}: missing (recorded in .complete at save time)",
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_resume_checkpoint(ckpts) == ckpts / "checkpoint-2"
    assert f"Checkpoint {ckpts / 'checkpoint-4'} is not usable and is skipped: {problem}" in caplog.text


def test_bad_json(run_copy) -> None:
    ckpt = run_copy() / "checkpoint-4"
    (ckpt / "trainer_state.json").write_text('{"global_step": 4,')
    (ckpt / "adapter_config.json").write_text("{'r': 4}")
    problems = validate_checkpoint(ckpt)
    assert (
        problems[0]
        == "trainer_state.json: invalid JSON (Expecting property name enclosed in double quotes at line 1 column 19)"
    )
    assert (
        "adapter_config.json: invalid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"
        in problems
    )


def test_step_mismatch_and_truncated_optimizer(run_copy) -> None:
    ckpts = run_copy()
    ckpt = ckpts / "checkpoint-4"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["global_step"] = 3
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    _truncate(ckpt / "optimizer.pt", 1000)
    problems = validate_checkpoint(ckpt)
    assert problems[:2] == [
        "trainer_state.json: global_step 3 does not match directory checkpoint-4",
        "optimizer.pt: truncated or corrupt (not a readable torch.save archive)",
    ]


def test_crash_before_marker_is_skipped(run_copy, caplog) -> None:
    """A save interrupted before on_save: files may all be there, but no marker."""
    ckpts = run_copy()
    (ckpts / "checkpoint-4" / MARKER_NAME).unlink()
    assert validate_checkpoint(ckpts / "checkpoint-4") == []  # content alone looks fine
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_resume_checkpoint(ckpts) == ckpts / "checkpoint-2"
    assert (
        f"Checkpoint {ckpts / 'checkpoint-4'} is not usable and is skipped: .complete: missing (the save did not finish)"
        in caplog.text
    )
    # Without any marker in the folder (a plain Trainer run), content validation decides.
    (ckpts / "checkpoint-2" / MARKER_NAME).unlink()
    assert find_resume_checkpoint(ckpts) == ckpts / "checkpoint-4"
    assert find_resume_checkpoint(ckpts, require_marker=True) is None


def test_no_valid_checkpoint(run_copy, tmp_path, caplog) -> None:
    ckpts = run_copy()
    for ckpt in ckpts.iterdir():
        (ckpt / "optimizer.pt").unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_resume_checkpoint(ckpts) is None
    assert caplog.records[-1].getMessage() == (
        f"No valid checkpoint in {ckpts} (all of checkpoint-4, checkpoint-2 are damaged)."
    )
    assert find_resume_checkpoint(tmp_path / "nowhere") is None


def test_resolve_resume(run_copy, tmp_path) -> None:
    ckpts = run_copy()
    assert resolve_resume(None, ckpts) is None
    assert resolve_resume("auto", ckpts) == ckpts / "checkpoint-4"
    assert resolve_resume("auto", tmp_path / "empty") is None
    assert resolve_resume(str(ckpts / "checkpoint-2"), ckpts) == ckpts / "checkpoint-2"
    assert resolve_resume(str(ckpts.parent), tmp_path / "other") == ckpts / "checkpoint-4"  # run dir
    (ckpts / "checkpoint-4" / "scheduler.pt").unlink()
    with pytest.raises(CheckpointError) as err:
        resolve_resume(str(ckpts / "checkpoint-4"), ckpts)
    assert str(err.value) == (
        f"--resume {ckpts / 'checkpoint-4'}: checkpoint is damaged: scheduler.pt: missing; "
        "scheduler.pt: missing (recorded in .complete at save time). "
        "Pass an earlier checkpoint-N or use --resume auto to pick the latest valid one."
    )
    with pytest.raises(CheckpointError, match="no such file or directory"):
        resolve_resume(str(tmp_path / "missing"), ckpts)


def test_resume_from_fallback_supersedes_damaged_checkpoint(run_copy, caplog) -> None:
    """Resume from checkpoint-2 while a damaged checkpoint-4 exists: it is moved aside, then rewritten."""
    ckpts = run_copy()
    _truncate(ckpts / "checkpoint-4" / "adapter_model.safetensors", 50)
    resume = resolve_resume("auto", ckpts)
    assert resume == ckpts / "checkpoint-2"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        run_trainer(ckpts, [AtomicCheckpointCallback()], resume=str(resume), model=lora_model())
    assert (
        f"Moved checkpoint-4 to {ckpts / 'superseded'}: it is newer than the step this run starts from (2)."
        in caplog.text
    )
    assert sorted(p.name for p in (ckpts / "superseded").iterdir()) == ["checkpoint-4"]
    assert validate_checkpoint(ckpts / "checkpoint-4") == []
    assert find_resume_checkpoint(ckpts) == ckpts / "checkpoint-4"


def test_resumed_weights_equal_uninterrupted(pristine_run, run_copy) -> None:
    """Resuming from checkpoint-2 reproduces the uninterrupted checkpoint-4 adapter exactly."""
    from safetensors.torch import load_file

    ckpts = run_copy()
    import shutil

    shutil.rmtree(ckpts / "checkpoint-4")
    run_trainer(ckpts, [AtomicCheckpointCallback()], resume=str(ckpts / "checkpoint-2"), model=lora_model())
    a = load_file(pristine_run / "checkpoint-4" / "adapter_model.safetensors")
    b = load_file(ckpts / "checkpoint-4" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key
