"""SIGINT delivered to one rank of a 2-process DDP run stops every rank at the same step, with a checkpoint.

A scheduler or a `kill -INT` may reach only one process of a launch. Saving a checkpoint is a
collective, so a rank that stopped alone would leave the other blocked in its next all-reduce; the
ranks agree on the stop at the end of each step instead. The launch runs on CPU (gloo); without that
agreement it hangs and the timeout below fails the test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from distributed_helpers import REPO_ROOT, cli_env, moc_command, run_overrides

from moc_cli.reliability.checkpoints import find_resume_checkpoint, validate_checkpoint

pytestmark = pytest.mark.slow

CPU_2PROC = REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
EXIT_INTERRUPTED = 130


def _logged_steps(run_dir: Path) -> list[int]:
    log = run_dir / "logs" / "metrics.jsonl"
    if not log.is_file():
        return []
    steps = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line being written
            continue
        if "loss" in record:
            steps.append(int(record["step"]))
    return steps


def _rank_process(launcher: subprocess.Popen, rank: int, timeout: float) -> psutil.Process:
    """The worker process of `rank` among the launcher's descendants (found by its RANK variable)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "moc_cli" in " ".join(child.cmdline()):
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no worker process with RANK={rank} within {timeout} s")


def test_sigint_to_one_rank_stops_both_with_a_checkpoint(tiny_bert_dir, sst2_small, tmp_path) -> None:
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [
            str(Path(moc_command()[0]).parent / "accelerate"),
            "launch",
            "--config_file",
            str(CPU_2PROC),
            "--main_process_port",
            "29533",
            "-m",
            "moc_cli",
            "train",
            "--recipe",
            "demo/sentiment",
            *run_overrides(tiny_bert_dir, sst2_small),
            "training.per_device_train_batch_size=4",
            "training.max_steps=100000",  # never reached: the run ends only through the interrupt
            f"output.dir={out}",
        ],
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the signal below must reach rank 1 only, not this test's group
    )
    try:
        worker = _rank_process(launcher, rank=1, timeout=120)
        deadline = time.monotonic() + 300
        while not _logged_steps(out):  # training (not start-up) is under way
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no training step was logged within 300 s"
            time.sleep(0.1)
        worker.send_signal(signal.SIGINT)
        _, stderr = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:  # hung: kill the workers too, or they outlive the test
            for process in [
                *psutil.Process(launcher.pid).children(recursive=True),
                psutil.Process(launcher.pid),
            ]:
                process.kill()
            launcher.wait(timeout=30)

    assert launcher.returncode != 0, "an interrupted launch must not report success"
    assert f"exitcode  : {EXIT_INTERRUPTED}" in stderr, stderr[-3000:]  # torchrun's report per rank
    assert "terminate called" not in stderr, stderr[-3000:]  # no abort after the clean stop
    checkpoint = find_resume_checkpoint(out / "checkpoints")
    assert checkpoint is not None, stderr[-3000:]
    assert validate_checkpoint(checkpoint) == []
    assert f"Interrupted: saved a resumable checkpoint at {checkpoint}" in stderr
    assert not (out / "adapter").exists()
    step = int(checkpoint.name.removeprefix("checkpoint-"))
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
