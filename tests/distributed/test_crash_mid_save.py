"""A crash in the middle of writing checkpoint-20: the half-written checkpoint is skipped and moved aside,
and the run resumed from checkpoint-10 with the reliability callbacks ends exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import pytest
import torch
from distributed_helpers import REPO_ROOT, adapter_tensors, run

from moc_cli.reliability.checkpoints import MARKER_NAME, find_resume_checkpoint, validate_checkpoint

pytestmark = pytest.mark.slow

STEPS = 30


def _overrides(base_overrides: list[str], out: Path) -> list[str]:
    return [*base_overrides, f"training.max_steps={STEPS}", f"output.dir={out}"]


def _run_in_process(overrides: list[str], resume: str | None = None) -> None:
    from moc_cli.config import load_run_config
    from moc_cli.reliability import default_callbacks
    from moc_cli.training import run_training

    cfg, provenance = load_run_config(recipe="demo/sentiment", config_file=None, overrides=overrides)
    run_training(cfg, provenance, resume, callbacks=default_callbacks())


def test_crash_mid_save_then_resume(base_overrides, tmp_path, caplog) -> None:
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    _run_in_process(_overrides(base_overrides, reference))
    for step in (10, 20, 30):
        assert (reference / "checkpoints" / f"checkpoint-{step}" / MARKER_NAME).is_file()

    overrides_file = tmp_path / "overrides.json"
    overrides_file.write_text(json.dumps(_overrides(base_overrides, crashed)))
    driver = Path(__file__).with_name("crash_driver.py")
    died = run([sys.executable, str(driver), str(overrides_file), "checkpoint-20/scheduler.pt"], timeout=600)
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]

    ckpts = crashed / "checkpoints"
    partial = ckpts / "checkpoint-20"
    assert (partial / "adapter_model.safetensors").is_file() and (partial / "optimizer.pt").is_file()
    assert validate_checkpoint(partial) == ["trainer_state.json: missing", "scheduler.pt: missing"]
    with caplog.at_level(logging.WARNING, logger="moc_cli.reliability.checkpoints"):
        resume = find_resume_checkpoint(ckpts)
    assert resume == ckpts / "checkpoint-10"
    assert (
        f"Checkpoint {partial} is not usable and is skipped: .complete: missing (the save did not finish); "
        in caplog.text
    )

    with caplog.at_level(logging.WARNING, logger="moc_cli.reliability.checkpoints"):
        _run_in_process(_overrides(base_overrides, crashed), resume=str(resume))
    assert f"Moved checkpoint-20 to {ckpts / 'superseded'}" in caplog.text
    assert not (ckpts / "superseded" / "checkpoint-20" / "trainer_state.json").exists()
    for step in (10, 20, 30):
        assert validate_checkpoint(ckpts / f"checkpoint-{step}") == []
        assert (ckpts / f"checkpoint-{step}" / MARKER_NAME).is_file()

    want, got = adapter_tensors(reference), adapter_tensors(crashed)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert REPO_ROOT.is_dir()
