"""Accuracy study: grids and keys, overrides accepted by the real config loader, the learning-rate
sweep read back from stored cells, the resumable shared queue, deadlines and input errors."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_accuracy_helpers import (
    CTX,
    failing_runner,
    fake_runner,
    fake_value,
    record,
    write_model_config,
    write_task_files,
)

from moc_cli.bench import AccuracyError, run_accuracy_benchmark
from moc_cli.bench.cell_queue import run_queue
from moc_cli.bench.data import majority_baseline, shared_dir, task_data_dir, train_steps
from moc_cli.bench.records import FAILURES_JSONL, RESULTS_JSONL, claim, load_finished
from moc_cli.bench.runner import Settings, cell_overrides
from moc_cli.bench.study import (
    ABLATIONS,
    MAIN_SEEDS,
    METHODS,
    TASKS,
    ablation_cells,
    cell_from_key,
    chosen_rates,
    main_cells,
    make_cell,
    normalised_gain,
    select_learning_rates,
    sweep_cells,
)

RATES = {m: 1e-3 for m in METHODS} | {"full": 1e-4}


@pytest.fixture
def study_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Tiny task files under $MOC_SHARED_DIR, a model folder, results and work folders."""
    monkeypatch.setenv("MOC_SHARED_DIR", str(write_task_files(tmp_path / "shared")))
    majority_baseline.cache_clear()
    return {
        "model": write_model_config(tmp_path / "model"),
        "out": tmp_path / "results",
        "work": tmp_path / "work",
    }


def bench(env: dict, logged: list[str] | None = None, **kwargs) -> Path:
    """run_accuracy_benchmark on the tiny study with the fake runner, in this process, on the CPU."""
    options = {
        "output_dir": env["out"],
        "work_dir": env["work"],
        "model": env["model"],
        "device": "cpu",
        "cell_runner": fake_runner,
        "command": "python benchmarks/accuracy.py --test",
        "log": (logged.append if logged is not None else lambda _m: None),
    }
    return run_accuracy_benchmark(**{**options, **kwargs})


def test_grids_cover_the_study_once_per_cell() -> None:
    sweep = sweep_cells(CTX)
    assert len(sweep) == 3 * (5 * 4 + 3)
    assert sweep[0].key == "glue/cola|moc|seed=0|lr=0.0003|ep=3|n=all|bs=32|len=128|fp32|bert-L2-d32"
    main = main_cells(CTX, RATES)
    assert len(main) == sum(MAIN_SEEDS.values()) * len(TASKS) == 192
    assert len({c.key for c in main}) == 192
    # Seed-major: a deadline leaves whole seeds of every method for the paired tables.
    assert [c.seed for c in main[:48]] == [0] * 48
    assert {c.label for c in main if c.seed == 3} == {"moc", "control", "lora-qv"}
    assert main[48].key == "glue/cola|moc|seed=1|lr=0.001|ep=3|n=all|bs=32|len=128|fp32|bert-L2-d32"
    ablations = ablation_cells(CTX, 1e-3)
    assert len(ablations) == (len(ABLATIONS) + 1) * 2 * 3 == 78
    # Shared cells train once: the sweep's seed 0 at the chosen rate, and the ablations' reference.
    main_keys = {c.key for c in main}
    assert {c.key for c in ablations if c.label == "moc"} <= main_keys
    assert make_cell("sweep", "glue/rte", "dora", 0, 1e-3, CTX).key in main_keys
    sst2 = next(c for c in main if c.task == "glue/sst2")
    assert sst2.key == "glue/sst2|moc|seed=0|lr=0.001|ep=2|n=10000|bs=32|len=128|fp32|bert-L2-d32"


def test_a_key_names_its_cell_and_a_bad_key_names_the_fix() -> None:
    cell = replace(make_cell("main", "glue/sst2", "moc variant=ffn", 4, 3e-4, CTX), max_steps=8)
    assert cell.key == (
        "glue/sst2|moc variant=ffn|seed=4|lr=0.0003|ep=2|n=10000|bs=32|len=128|fp32|bert-L2-d32|cap=8"
    )
    assert cell_from_key(cell.key) == replace(cell, grid="cell")
    with pytest.raises(AccuracyError) as err:
        cell_from_key("glue/rte|moc|seed=0")
    assert str(err.value) == (
        "--cell 'glue/rte|moc|seed=0' is not a cell key (task|method|seed=N|lr=X|ep=..|n=..|bs=..|len=..|"
        "precision|model); copy one from accuracy.jsonl or the cell list of accuracy.md"
    )
    with pytest.raises(AccuracyError, match=r"^'moc beta=1' is neither a method \(moc, control, lora-qv"):
        cell_from_key("glue/rte|moc beta=1|seed=0|lr=0.001|ep=6|n=all|bs=32|len=128|fp32|bert-L6-d384")


def test_every_cell_resolves_through_the_real_config_loader(study_env: dict) -> None:
    from moc_cli.config import load_run_config

    cells = sweep_cells(CTX) + main_cells(CTX, RATES) + ablation_cells(CTX, 1e-3)
    by_label = {}
    for cell in {c.label: c for c in cells}.values():
        data = task_data_dir(cell.task, study_env["work"])
        cfg, _ = load_run_config(None, None, cell_overrides(cell, Path("/tmp/run"), study_env["model"], data))
        assert cfg.seed == cell.seed and cfg.task.name == cell.task
        assert cfg.training.learning_rate == cell.learning_rate and cfg.training.max_steps == -1
        assert cfg.training.num_train_epochs == cell.budget.epochs and cfg.training.bf16 is False
        assert cfg.data.path == str(data) and cfg.data.max_eval_samples is None  # whole validation split
        by_label[cell.label] = cfg.method
    assert by_label["moc"].variant == "both-shared" and by_label["moc"].alpha == 0.95
    assert by_label["control"].name == "control" and by_label["control"].variant == "both-separate"
    assert by_label["lora-qv"].r == 8 and list(by_label["lora-qv"].target_modules) == ["query", "value"]
    assert by_label["lora-all"].target_modules == "all-linear"
    assert by_label["dora"].name == "dora"
    assert by_label["moc alpha=0.5"].alpha == 0.5 and by_label["moc top_k=2"].top_k == 2
    assert by_label["moc no balance loss"].aux_loss_coef == 0.0
    assert by_label["moc variant=block"].variant == "block"
    assert by_label["moc router_scope=per_layer"].router_scope == "per_layer"
    assert by_label["moc learnable alpha"].learnable_alpha is True
    assert by_label["moc router_temperature=0.25"].router_temperature == 0.25
    sst2 = make_cell("main", "glue/sst2", "moc", 0, 1e-3, replace(CTX, precision="bf16", max_steps=8))
    data = task_data_dir("glue/sst2", study_env["work"])
    cfg, _ = load_run_config(None, None, cell_overrides(sst2, Path("/tmp/run"), study_env["model"], data))
    assert cfg.data.max_train_samples == 10_000 and cfg.training.bf16 is True and cfg.training.max_steps == 8


def test_majority_baseline_and_steps_come_from_the_task_files(study_env: dict) -> None:
    rte = task_data_dir("glue/rte", study_env["work"])
    assert majority_baseline("glue/rte", rte) == {
        "metric": "accuracy",
        "value": 0.75,
        "class": "not_entailment",
        "n": 4,
    }
    cola = task_data_dir("glue/cola", study_env["work"])
    assert majority_baseline("glue/cola", cola)["value"] == 0.0  # Matthews of a constant prediction
    assert train_steps(make_cell("main", "glue/rte", "moc", 0, 1e-3, CTX), rte) == 6 * 2
    assert train_steps(make_cell("main", "superglue/cb", "moc", 0, 1e-3, CTX), rte) == 20 * 4
    assert train_steps(replace(make_cell("main", "superglue/cb", "moc", 0, 1e-3, CTX), max_steps=5), rte) == 5


def test_majority_baselines_of_the_real_validation_splits(shared_data: Path) -> None:
    majority_baseline.cache_clear()
    assert majority_baseline("glue/cola", shared_data / "glue/cola")["value"] == 0.0
    assert majority_baseline("glue/mrpc", shared_data / "glue/mrpc")["value"] == 279 / 408
    assert majority_baseline("glue/rte", shared_data / "glue/rte")["value"] == 146 / 277
    assert majority_baseline("superglue/wsc", shared_data / "superglue/wsc")["value"] == 66 / 104
    assert majority_baseline("superglue/copa", shared_data / "superglue/copa") == {
        "metric": "accuracy",
        "value": 0.55,
        "class": "choice1",
        "n": 100,
    }


def sweep_records(value=fake_value) -> dict[str, dict]:
    out = {}
    for cell in sweep_cells(CTX):
        majority = 0.0 if cell.task == "glue/cola" else 0.75
        r = record(cell.label, cell.task, 0, cell.learning_rate, value(cell), majority)
        out[r["key"]] = r
    return out


def test_each_method_gets_the_rate_with_the_best_mean_normalised_gain() -> None:
    assert normalised_gain(0.86, 0.75) == pytest.approx(0.44, abs=1e-15)
    assert normalised_gain(0.31, 0.0) == 0.31
    choices = select_learning_rates(sweep_records(), CTX)
    assert {m: c.rate for m, c in choices.items()} == RATES
    moc = choices["moc"]
    assert not moc.missing and not moc.at_edge
    # glue/cola 0.311 (Matthews, majority 0), glue/mrpc and glue/rte 0.861 (majority 0.75)
    assert moc.mean_gain[1e-3] == pytest.approx((0.311 + 2 * 0.111 / 0.25) / 3, abs=1e-12)
    assert chosen_rates(choices, "main", Path("s")) == RATES


def test_rate_ties_go_to_the_smaller_rate_and_diverged_rates_are_never_chosen() -> None:
    records = sweep_records(lambda c: 0.9)  # every rate ties
    assert select_learning_rates(records, CTX, ["lora-qv"])["lora-qv"].rate == 3e-4
    for r in records.values():
        if r["label"] == "lora-qv" and r["learning_rate"] == 3e-4 and r["task"] == "glue/rte":
            r["value"] = None  # diverged
    choice = select_learning_rates(records, CTX, ["lora-qv"])["lora-qv"]
    assert choice.rate == 1e-3 and choice.mean_gain[3e-4] is None and not choice.at_edge
    edge = select_learning_rates(sweep_records(lambda c: c.learning_rate), CTX, ["moc"])["moc"]
    assert edge.rate == 1e-2 and edge.at_edge


def test_main_grid_without_the_sweep_names_the_fix(study_env: dict) -> None:
    with pytest.raises(AccuracyError) as err:
        bench(study_env, grids=["main"])
    store = study_env["out"] / RESULTS_JSONL
    assert str(err.value) == (
        f"--grid main trains each method at the rate its learning-rate sweep chose, and 69 sweep cell(s) are "
        f"not in {store} yet (first: glue/cola|moc|seed=0|lr=0.0003|ep=3|n=all|bs=32|len=128|fp32|bert-L2-d32); "
        "run --grid sweep first (same --output-dir, --model and --precision), or pass --merge FILE holding the "
        "stored sweep"
    )


def test_sweep_then_main_in_one_command_and_finished_cells_are_skipped(
    study_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("ACC_TEST_CALLS", str(calls))
    logged: list[str] = []
    report = bench(study_env, logged, grids=["sweep", "main"], methods=["moc", "control"])
    ran = calls.read_text().splitlines()
    # 3 tasks x 2 methods x 4 rates, then 8 tasks x 2 methods x 5 seeds at 1e-3 less the 6 sweep
    # cells that are also main-grid cells (seed 0 at the chosen rate)
    assert len(ran) == 24 + 80 - 6
    store = study_env["out"] / RESULTS_JSONL
    finished = load_finished(store)
    assert len(finished) == 98
    key = "glue/rte|moc|seed=3|lr=0.001|ep=6|n=all|bs=32|len=128|fp32|bert-L2-d32"
    r = finished[key]
    assert r["value"] == fake_value(cell_from_key(key))
    assert r["majority"] == {"metric": "accuracy", "value": 0.75, "class": "not_entailment", "n": 4}
    assert r["train_steps"] == 12 and r["threads"] == 1 and r["workers"] == 0
    assert r["device"] == "cpu (test)" and r["scheduled_by"] == "python benchmarks/accuracy.py --test"
    assert r["command"] == (
        f"python benchmarks/accuracy.py --cell '{key}' --model {study_env['model']} --device cpu "
        "--output-dir accuracy-repro"
    )
    assert len(r["load_average_start"]) == 3 and r["grid"] == "main"
    assert (
        "glue/rte: majority class 'not_entailment' scores accuracy 0.7500 on 4 validation rows; "
        "8 cell(s) to run, 96 steps" in logged
    )
    assert report.name == "accuracy_table.md" and (study_env["out"] / "accuracy_table.csv").is_file()

    calls.write_text("")
    bench(study_env, grids=["sweep", "main"], methods=["moc", "control"])
    assert calls.read_text() == ""
    # An interrupted append leaves a truncated last line: ignored, and that cell runs again.
    lines = store.read_text().splitlines()
    store.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    bench(study_env, grids=["main"], methods=["moc", "control"])
    assert [line.split(" ", 1)[1] for line in calls.read_text().splitlines()] == [
        json.loads(lines[-1])["key"]
    ]
    assert len(load_finished(store)) == 98


def test_a_failing_cell_is_logged_apart_and_the_queue_goes_on(study_env: dict) -> None:
    logged: list[str] = []
    bench(
        study_env,
        logged,
        grids=["sweep"],
        methods=["moc", "control"],
        tasks=["glue/mrpc"],
        cell_runner=failing_runner,
    )
    finished = load_finished(study_env["out"] / RESULTS_JSONL)
    assert sorted({r["label"] for r in finished.values()}) == ["moc"] and len(finished) == 4
    failures = load_finished(study_env["out"] / FAILURES_JSONL)
    assert len(failures) == 4
    first = failures["glue/mrpc|control|seed=0|lr=0.0003|ep=4|n=all|bs=32|len=128|fp32|bert-L2-d32"]
    assert first["error"] == "RuntimeError: boom" and "raise RuntimeError" in first["traceback"]
    assert (
        "FAILED glue/mrpc|control|seed=0|lr=0.0003|ep=4|n=all|bs=32|len=128|fp32|bert-L2-d32: RuntimeError: boom"
        in logged
    )


def test_processes_running_the_same_command_share_the_queue(study_env: dict) -> None:
    cells = sweep_cells(CTX, ["glue/rte"], ["moc"])[:2]
    settings = Settings(study_env["work"], study_env["model"], "cpu")
    logged: list[str] = []
    # flock conflicts between two open file descriptions even inside one process, so holding the
    # claim here stands in for a second worker that is training the cell.
    with claim(study_env["work"], cells[0]) as mine:
        assert mine
        counts = run_queue(cells, settings, study_env["out"], "cmd", fake_runner, logged.append)
    assert counts == {"ran": 1, "failed": 0, "skipped": 0}
    assert list(load_finished(study_env["out"] / RESULTS_JSONL)) == [cells[1].key]
    assert not list((study_env["work"] / "locks").glob("*.lock"))  # released claims leave no files
    run_queue(cells, settings, study_env["out"], "cmd", fake_runner, logged.append)
    assert list(load_finished(study_env["out"] / RESULTS_JSONL)) == [cells[1].key, cells[0].key]


def test_no_cell_starts_after_the_deadline_nor_one_expected_to_end_past_it(study_env: dict) -> None:
    cells = sweep_cells(CTX, ["glue/rte"], ["moc"])
    settings = Settings(study_env["work"], study_env["model"], "cpu")
    logged: list[str] = []
    counts = run_queue(
        cells, settings, study_env["out"], "c", fake_runner, logged.append, deadline_at=time.time() - 1
    )
    assert counts == {"ran": 0, "failed": 0, "skipped": 4} and logged == ["deadline: 4 cell(s) not started"]
    # One cell of moc on rte took 100 s here: with 50 s to the deadline and no grace, no other starts.
    store = study_env["out"] / RESULTS_JSONL
    first = record("moc", "glue/rte", 0, 3e-4, 0.8)
    first.update(key=cells[0].key, device="cpu (x)", wall_s=100.0)
    store.parent.mkdir(parents=True)
    store.write_text(json.dumps(first) + "\n")
    logged.clear()
    counts = run_queue(
        cells,
        settings,
        study_env["out"],
        "c",
        fake_runner,
        logged.append,
        deadline_at=time.time() + 50,
        grace_s=0,
    )
    assert counts["skipped"] == 3 and counts["ran"] == 0
    counts = run_queue(
        cells,
        settings,
        study_env["out"],
        "c",
        fake_runner,
        logged.append,
        deadline_at=time.time() + 50,
        grace_s=60,
    )
    assert counts["ran"] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grids": ["huge"]}, "--grid 'huge' is unknown; choose from main, ablations, sweep"),
        (
            {"tasks": ["glue/qnli"]},
            "--task 'glue/qnli' is not a task of the accuracy study; choose from glue/cola, glue/mrpc, glue/rte, "
            "glue/sst2, superglue/cb, superglue/copa, superglue/wsc, demo/sentiment",
        ),
        (
            {"methods": ["ia3"]},
            "--method 'ia3' is not a method of the accuracy study; choose from moc, control, lora-qv, lora-all, "
            "dora, full",
        ),
        ({"workers": -1}, "--workers -1: use 0 (cells run in this process) or a positive count"),
        ({"threads": 0}, "--threads 0: use 1 or more torch threads per cell"),
        ({"max_steps": 0}, "--max-steps 0: use a positive step cap, or leave it out for the full budget"),
        ({"deadline_s": 0}, "--deadline-s 0: use a positive number of seconds"),
        ({"seeds": [-1]}, "--seed takes non-negative integers"),
        ({"device": "tpu"}, "--device 'tpu' is unknown; choose from auto, cuda, cpu"),
        ({"precision": "fp8"}, "--precision 'fp8' is unknown; choose from auto, fp32, bf16"),
    ],
)
def test_bad_input_names_the_option_and_the_fix(study_env: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(AccuracyError) as err:
        bench(study_env, **kwargs)
    assert str(err.value) == message


def test_missing_model_data_and_merge_files_name_the_fix(
    study_env: dict, tmp_path: Path, monkeypatch
) -> None:
    with pytest.raises(AccuracyError) as err:
        bench(study_env, model=tmp_path / "nope", grids=["sweep"])
    assert str(err.value) == (
        f"--model {tmp_path / 'nope'}: no such folder; pass a local model folder (with config.json) or leave "
        "--model out for the packaged MiniLM-L6"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(AccuracyError, match=r": no config.json there; pass a local model folder"):
        bench(study_env, model=tmp_path / "empty", grids=["sweep"])
    with pytest.raises(AccuracyError) as err:
        bench(study_env, merge=[tmp_path / "old.jsonl"], grids=["sweep"])
    assert str(err.value) == (
        f"--merge {tmp_path / 'old.jsonl'}: no such file; pass an accuracy.jsonl written by this benchmark"
    )
    monkeypatch.setenv("MOC_SHARED_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(AccuracyError) as err:
        bench(study_env, grids=["sweep"])
    assert str(err.value) == (
        f"--task glue/cola: no train.jsonl and validation.jsonl in {tmp_path / 'nowhere/data/glue/cola'} or "
        f"{tmp_path / 'nowhere/glue/cola'}; set MOC_SHARED_DIR to the folder holding data/<suite>/<task>/"
    )


def test_shared_dir_may_name_the_data_folder_itself(study_env: dict, monkeypatch) -> None:
    root = shared_dir()
    monkeypatch.setenv("MOC_SHARED_DIR", str(root / "data"))
    assert task_data_dir("glue/rte", study_env["work"]) == root / "data" / "glue" / "rte"


def test_merge_copies_other_cells_and_a_cell_key_reruns_exactly_that_cell(
    study_env: dict, tmp_path: Path
) -> None:
    bench(study_env, grids=["sweep"], methods=["full"], tasks=["glue/rte"])
    other = {**study_env, "out": tmp_path / "elsewhere"}
    logged: list[str] = []
    bench(
        other,
        logged,
        merge=[study_env["out"] / RESULTS_JSONL],
        grids=["sweep"],
        methods=["full"],
        tasks=["glue/rte"],
    )
    assert f"merged 3 cell(s) from {study_env['out'] / RESULTS_JSONL}" in logged
    assert "3 cells requested, 3 already finished, 0 to run (0 training steps) on cpu" in logged
    key = "glue/rte|full|seed=0|lr=0.0001|ep=6|n=all|bs=32|len=128|fp32|bert-L2-d32"
    again = {**study_env, "out": tmp_path / "repro"}
    bench(again, cells=[key])
    assert list(load_finished(again["out"] / RESULTS_JSONL)) == [key]
    with pytest.raises(
        AccuracyError, match=r"was trained on a bert-L6-d384 model, but --model resolves to bert-L2-d32"
    ):
        bench(again, cells=[key.replace("bert-L2-d32", "bert-L6-d384")])


def test_script_exits_2_with_the_error_and_report_only_says_the_study_is_pending(study_env: dict) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"
    out = study_env["out"]
    done = subprocess.run(
        [sys.executable, str(script), "--grid", "huge", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == "error: --grid 'huge' is unknown; choose from main, ablations, sweep\n"
    done = subprocess.run(
        [sys.executable, str(script), "--report-only", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout == f"wrote {out / 'accuracy.md'}\n"
    text = (out / "accuracy.md").read_text()
    assert (
        "The converged study is pending: 0 of 69 learning-rate sweep cells and 0 of 192 main-grid cells"
        in text
    )


def test_dry_run_lists_a_grid_and_its_steps_even_before_the_sweep(study_env: dict) -> None:
    logged: list[str] = []
    bench(study_env, logged, grids=["main"], dry_run=True)
    assert logged[0] == (
        "dry run: the sweep of moc, control, lora-qv, lora-all, dora, full is not finished; their cells are "
        "listed at their first candidate rate"
    )
    # per method and seed: 6 + 8 + 12 + 4 + 80 + 40 + 40 + 4 steps over the 8 tasks; 24 methods x seeds
    assert "192 cells requested, 0 already finished, 192 to run (4,656 training steps) on cpu" in logged
    assert "  glue/cola|moc|seed=0|lr=0.0003|ep=3|n=all|bs=32|len=128|fp32|bert-L2-d32" in logged
    assert sorted(p.name for p in study_env["out"].iterdir()) == []  # no store, no tables


def test_device_cuda_without_a_gpu_names_the_fix(study_env: dict) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(AccuracyError) as err:
        bench(study_env, device="cuda", grids=["sweep"])
    assert str(err.value) == "--device cuda: torch sees no CUDA device here; use --device cpu (or auto)"
    # auto falls back to the CPU, with fp32
    logged: list[str] = []
    bench(
        study_env, logged, device="auto", grids=["sweep"], tasks=["glue/rte"], methods=["full"], dry_run=True
    )
    assert "  glue/rte|full|seed=0|lr=3e-05|ep=6|n=all|bs=32|len=128|fp32|bert-L2-d32" in logged
