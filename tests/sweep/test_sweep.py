"""`moc sweep` end to end: trials are run folders, grid search, --show and plots, Ctrl-C, two workers, a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from sweep_helpers import FakeRunner, fake_accuracy
from typer.testing import CliRunner

from moc_cli.cli.app import app

TrialState = optuna.trial.TrialState
STORAGE = "sqlite:///runs/sweeps.db"
HERE = Path(__file__).resolve().parent
PNG = b"\x89PNG\r\n\x1a\n"


def moc(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def study(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=STORAGE)


def test_trials_are_run_folders_of_the_training_runner(in_tmp: Path, fixed: list[str]) -> None:
    result = moc(
        "sweep", "--recipe", "glue/sst2", *fixed,
        "training.learning_rate=loguniform:1e-4:1e-2", "method.r=choice:4,8",
        "--trials", "2", "--study", "sst2-moc",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    found = study("sst2-moc")
    assert found.direction == optuna.study.StudyDirection.MAXIMIZE  # accuracy: the task's direction
    trials = found.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        assert run == Path("runs/sweeps/sst2-moc") / f"trial-{t.number:04d}"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["training"]["learning_rate"] == t.params["training.learning_rate"]
        assert config["method"]["r"] == t.params["method.r"]
        results = json.loads((run / "eval" / "results.json").read_text())
        assert t.value == results["metrics"]["validation"]["eval_accuracy"]  # the run's main metric
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (
        f"study sst2-moc in {STORAGE}: maximize eval_accuracy over 2 key(s), tpe sampler, 2 complete"
        in result.stdout
    )
    for name in ("optimization_history.png", "param_importances.png"):
        assert (in_tmp / "runs/sweeps/sst2-moc/plots" / name).read_bytes().startswith(PNG)


def test_grid_search_runs_each_point_once_and_show_prints_the_best(
    in_tmp: Path, fixed: list[str], fake_runner: FakeRunner
) -> None:
    args = [
        "sweep",
        "--recipe",
        "glue/sst2",
        *fixed,
        "training.learning_rate=grid:1e-3,1e-2",
        "method.r=grid:4,8",
    ]
    result = moc(*args, "--study", "grid")
    assert result.exit_code == 0, result.output
    trials = study("grid").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted((t.params["training.learning_rate"], t.params["method.r"]) for t in trials) == [
        (1e-3, 4),
        (1e-3, 8),
        (1e-2, 4),
        (1e-2, 8),
    ]
    again = moc(*args, "--study", "grid")  # the grid is done: nothing more to run
    assert again.exit_code == 0 and len(fake_runner.calls) == 4, again.output

    shown = moc("sweep", "--show", "grid", "--storage", STORAGE, "--top", "2")
    assert shown.exit_code == 0, shown.output
    best = max(trials, key=lambda t: t.value)
    second = sorted(trials, key=lambda t: t.value)[-2]
    assert (best.params, best.value) == ({"training.learning_rate": 1e-3, "method.r": 8}, 1.0)
    assert (second.params, second.value) == ({"training.learning_rate": 1e-3, "method.r": 4}, 0.666667)
    assert shown.stdout == (
        "study grid: maximize eval_accuracy; trials: 0 running, 4 complete, 0 pruned, 0 fail, 0 waiting\n"
        "\n"
        "rank  trial  eval_accuracy  method.r  training.learning_rate  run\n"
        f"   1      {best.number}              1         8                   0.001  runs/sweeps/grid/trial-000{best.number}\n"
        f"   2      {second.number}       0.666667         4                   0.001  runs/sweeps/grid/trial-000{second.number}\n"
        "\n"
        f"best: trial {best.number}, eval_accuracy=1: training.learning_rate=0.001 method.r=8\n"
        "plots: runs/sweeps/grid/plots/optimization_history.png, runs/sweeps/grid/plots/param_importances.png\n"
    )


def test_ctrl_c_fails_the_trial_and_the_next_start_runs_it_again(
    in_tmp: Path, fixed: list[str], fake_runner: FakeRunner
) -> None:
    args = ["sweep", "--recipe", "glue/sst2", *fixed, "training.learning_rate=loguniform:1e-4:1e-2"]
    fake_runner.interrupt_first = True
    result = moc(*args, "--trials", "2", "--study", "ctrl-c")
    assert result.exit_code == 130, result.output
    assert (
        "trial 0 interrupted: marked FAIL and queued again; run the same command to continue the study\n"
        in (result.stdout)
    )
    first = study("ctrl-c").get_trials()
    assert [t.state for t in first] == [TrialState.FAIL, TrialState.WAITING]  # consistent: nothing RUNNING
    lr = first[0].params["training.learning_rate"]

    fake_runner.interrupt_first = False
    result = moc(*args, "--trials", "2", "--study", "ctrl-c")
    assert result.exit_code == 0, result.output
    trials = study("ctrl-c").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].params == {"training.learning_rate": lr}  # the interrupted point ran first
    rerun = fake_runner.calls[1]  # calls[0] was interrupted
    assert rerun["training"]["learning_rate"] == lr and trials[1].value == fake_accuracy(rerun)


def test_direction_follows_the_task(hub_cache: Path, in_tmp: Path) -> None:
    from moc_cli.sweep import parse_sweep_items
    from moc_cli.sweep.study import plan_sweep

    plan = plan_sweep(
        "instruct/alpaca",
        None,
        parse_sweep_items(["training.learning_rate=loguniform:1e-5:1e-3"]),
        study_name=None,
        storage_url=STORAGE,
        trials=None,
        sampler="auto",
        output_dir=None,
        heartbeat=60,
    )
    assert (plan.study_name, plan.direction, plan.metric, plan.trials, plan.sampler) == (
        "instruct-alpaca",
        "minimize",
        "eval_loss",
        20,
        "tpe",
    )
    assert plan.output_dir == Path("runs/sweeps/instruct-alpaca")


def worker(tmp: Path, *args: str, fake: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    driver = [sys.executable, str(HERE / "sweep_driver.py")] + (
        ["--fake", str(fake)] if fake is not None else []
    )
    return subprocess.Popen(
        [*driver, *args], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_two_workers_share_one_sqlite_study(in_tmp: Path, fixed: list[str]) -> None:
    args = [
        "sweep", "--recipe", "glue/sst2", *fixed,
        "training.learning_rate=loguniform:1e-4:1e-2", "--trials", "4", "--study", "shared",
    ]  # fmt: skip
    # started together: both create or join the study; the stand-in runner holds each trial for a second
    # so the workers' trials overlap (the real runner's trials: the first test)
    workers = [worker(in_tmp, *args, fake=1.0) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = study("shared").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(trials)
    assert 4 <= len(trials) <= 5  # 4 wanted; a trial both workers start at the same moment may add one
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(trials)  # one run folder per trial
    ran = [sum("-> runs/sweeps/shared/trial-" in line for line in out.splitlines()) for out in outputs]
    assert all(n >= 1 for n in ran), outputs  # both workers ran trials


def running_trial_with_params(db: Path) -> bool:
    """Read-only look at Optuna's tables (opening the study here could race the worker's set-up)."""
    import sqlite3

    if not db.is_file():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = con.execute(
                "SELECT 1 FROM trials JOIN trial_params USING (trial_id) WHERE trials.state = 'RUNNING'"
            ).fetchall()
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return False
    return bool(rows)


def test_a_killed_workers_trial_is_failed_and_retried(
    in_tmp: Path, fixed: list[str], fake_runner: FakeRunner
) -> None:
    args = [
        "sweep", "--recipe", "glue/sst2", *fixed, "method.r=choice:4,8",
        "--trials", "1", "--study", "killed", "--heartbeat", "1",
    ]  # fmt: skip
    doomed = worker(in_tmp, *args, fake=60)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not running_trial_with_params(in_tmp / "runs" / "sweeps.db"):
        time.sleep(0.5)
    doomed.send_signal(signal.SIGKILL)  # no handler runs: the trial stays RUNNING in the storage
    output = doomed.communicate()[0]
    running = study("killed").get_trials()
    assert [t.state for t in running] == [TrialState.RUNNING], output
    time.sleep(3.0)  # past the grace period (2 heartbeats of 1 s) since the last heartbeat

    result = moc(*args)
    assert result.exit_code == 0, result.output
    trials = study("killed").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], (result.output, trials)
    assert trials[1].params == running[0].params  # the killed trial's point ran again
