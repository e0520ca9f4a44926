"""A training process killed with SIGKILL and resumed with `--resume auto` ends where an uninterrupted run does.

Real subprocesses of `python -m moc_cli train` on a tiny BERT (with dropout, so the RNG state must be
restored too) and the first 256 rows of SST-2. The kill lands after checkpoint-20 is complete, mid
epoch (32 steps per epoch), while training continues towards step 60.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from distributed_helpers import REPO_ROOT, adapter_tensors, cli_env, moc_command, results, run, train_losses

from moc_cli.reliability.checkpoints import find_resume_checkpoint, validate_checkpoint

pytestmark = pytest.mark.slow

MAX_STEPS = 60


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


def _assert_same_run(reference: Path, resumed: Path) -> None:
    want, got = adapter_tensors(reference), adapter_tensors(resumed)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert results(resumed)["metrics"] == results(reference)["metrics"]
    assert train_losses(resumed) == train_losses(reference)
    assert sorted(train_losses(reference)) == list(range(5, MAX_STEPS + 1, 5))


@pytest.fixture(scope="module")
def reference(base_overrides, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = run(_train_args(base_overrides, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def killed(base_overrides, tmp_path_factory) -> Path:
    """A run killed with SIGKILL once checkpoint-20 is complete (kept pristine: tests work on copies)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    proc = subprocess.Popen(
        _train_args(base_overrides, out),
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_valid_checkpoint(proc, out / "checkpoints" / "checkpoint-20", timeout=300)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "adapter").exists(), "the run finished before it was killed; the test proves nothing"
    assert not (out / "checkpoints" / f"checkpoint-{MAX_STEPS}").exists()
    return out


def test_sigkill_then_resume_auto_matches_uninterrupted(reference, killed, base_overrides, tmp_path) -> None:
    work = tmp_path / "run"
    shutil.copytree(killed, work)
    assert find_resume_checkpoint(work / "checkpoints") is not None
    resumed = run(_train_args(base_overrides, work, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(reference, work)


def test_resume_auto_skips_a_damaged_latest_checkpoint(reference, killed, base_overrides, tmp_path) -> None:
    work = tmp_path / "run"
    shutil.copytree(killed, work)
    latest = find_resume_checkpoint(work / "checkpoints")
    weights = latest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # e.g. a copy cut short by a full disk
    resumed = run(_train_args(base_overrides, work, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"Checkpoint {latest} is not usable and is skipped: adapter_model.safetensors: truncated"
        in resumed.stderr
    )
    _assert_same_run(reference, work)
