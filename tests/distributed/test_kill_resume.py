"""A training process killed with SIGKILL and resumed with `--resume auto` ends where an uninterrupted run does."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from distributed_helpers import REPO_ROOT, adapter_tensors, cli_env, moc_command, results, run, train_losses

from moc_cli.reliability.checkpoints import find_resume_checkpoint, validate_checkpoint

pytestmark = pytest.mark.slow

MAX_STEPS = 60  # 256 rows / 8 per step = 32 steps per epoch: the kill and the resume fall mid-epoch


def _train_args(overrides: list[str], out: Path, *extra: str) -> list[str]:
    return moc_command(
        "train",
        "--recipe",
        "demo/sentiment",
        *overrides,
        f"training.max_steps={MAX_STEPS}",
        "--output-dir",
        str(out),
        *extra,
    )


def _wait_for_valid_checkpoint(proc: subprocess.Popen, ckpt: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited with {proc.returncode} before {ckpt.name} appeared")
        if (ckpt / "trainer_state.json").is_file() and validate_checkpoint(ckpt) == []:
            return
        time.sleep(0.02)
    raise AssertionError(f"{ckpt} did not appear within {timeout} s")


def test_sigkill_then_resume_auto_matches_uninterrupted(base_overrides, tmp_path) -> None:
    reference = tmp_path / "uninterrupted"
    done = run(_train_args(base_overrides, reference))
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_args(base_overrides, killed),
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_valid_checkpoint(proc, killed / "checkpoints" / "checkpoint-10", timeout=240)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "adapter").exists(), "the run finished before it was killed; the test proves nothing"
    assert not (killed / "checkpoints" / f"checkpoint-{MAX_STEPS}").exists()
    resume_from = find_resume_checkpoint(killed / "checkpoints")
    assert resume_from is not None and resume_from.name.startswith("checkpoint-")

    resumed = run(_train_args(base_overrides, killed, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    want, got = adapter_tensors(reference), adapter_tensors(killed)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert results(killed)["metrics"] == results(reference)["metrics"]
    assert train_losses(killed) == train_losses(reference)
    assert sorted(train_losses(reference)) == list(range(5, MAX_STEPS + 1, 5))
