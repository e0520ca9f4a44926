"""Accuracy study in worker subprocesses: one shared queue (each cell once), one thread per worker,
no GPU for CPU cells, and a deadline after which running workers are stopped unrecorded.

The workers run the fake runners of test_accuracy_helpers (no torch is loaded); they are real
`python -m moc_cli.bench.workers` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_accuracy_helpers import CTX, env_runner, slow_runner, write_model_config, write_task_files

from moc_cli.bench.records import RESULTS_JSONL, load_finished
from moc_cli.bench.runner import Settings
from moc_cli.bench.study import sweep_cells
from moc_cli.bench.workers import run_workers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("MOC_SHARED_DIR", str(write_task_files(tmp_path / "shared")))
    return {
        "model": write_model_config(tmp_path / "model"),
        "out": tmp_path / "results",
        "work": tmp_path / "work",
        "tmp": tmp_path,
    }


def test_workers_share_the_queue_with_one_thread_each_and_no_gpu(env: dict) -> None:
    cells = sweep_cells(CTX, ["glue/rte"], ["moc", "control"])
    settings = Settings(env["work"], env["model"], "cpu", threads=1, workers=2)
    logged: list[str] = []
    counts = run_workers(
        cells,
        settings,
        env["out"],
        "python benchmarks/accuracy.py --t",
        2,
        env_runner,
        logged.append,
        poll_s=0.2,
    )
    assert counts == {"ran": 8, "failed_workers": 0, "killed_workers": 0}
    stored = load_finished(env["out"] / RESULTS_JSONL)
    assert sorted(stored) == sorted(c.key for c in cells)  # each cell once, none lost
    for r in stored.values():
        assert r["omp"] == "1" and r["cuda_visible"] == "" and r["pid"] != os.getpid()
        assert r["workers"] == 2 and r["threads"] == 1
        assert r["scheduled_by"] == "python benchmarks/accuracy.py --t"
    assert logged[0] == f"2 worker(s) started; logs in {env['work'] / 'logs'}"
    assert sum(1 for line in logged if line.startswith("[") and "/8] glue/rte|" in line) == 8
    assert (env["work"] / "logs" / "worker-0.log").is_file()
    assert not list((env["work"] / "queues").iterdir())  # the queue file is removed


def test_workers_still_training_at_deadline_plus_grace_are_stopped_unrecorded(
    env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACC_TEST_SLEEP", "60")
    cells = sweep_cells(CTX, ["glue/rte"], ["moc"])
    settings = Settings(env["work"], env["model"], "cpu", workers=2)
    logged: list[str] = []
    started = time.time()
    counts = run_workers(
        cells,
        settings,
        env["out"],
        "c",
        2,
        slow_runner,
        logged.append,
        deadline_at=started + 1,
        grace_s=1,
        poll_s=0.2,
    )
    assert time.time() - started < 30
    assert counts == {"ran": 0, "failed_workers": 0, "killed_workers": 2}
    assert "deadline + 1 s grace passed: stopping 2 worker(s); their running cells are not recorded" in logged
    assert load_finished(env["out"] / RESULTS_JSONL) == {}


def test_the_script_runs_a_grid_with_workers_and_a_deadline(env: dict) -> None:
    command = [
        sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--grid", "sweep", "--task", "glue/rte",
        "--method", "full", "--model", str(env["model"]), "--device", "cpu", "--workers", "2",
        "--deadline-s", "120", "--output-dir", str(env["out"]), "--work-dir", str(env["work"]),
        "--cell-runner", f"{ROOT / 'tests' / 'bench' / 'test_accuracy_helpers.py'}:env_runner",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert "3 cells requested, 0 already finished, 3 to run (36 training steps) on cpu" in done.stdout
    assert f"wrote {env['out'] / 'accuracy.md'}" in done.stdout
    stored = load_finished(env["out"] / RESULTS_JSONL)
    assert sorted(r["learning_rate"] for r in stored.values()) == [3e-5, 1e-4, 3e-4]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert "3 cells requested, 3 already finished, 0 to run (0 training steps) on cpu" in again.stdout
