"""Accuracy benchmark: cell grid, overrides accepted by the real config loader, resume (skip) logic."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from moc_cli.bench.accuracy import (
    ABLATIONS,
    MAIN_METHODS,
    AccuracyError,
    Budget,
    Cell,
    build_cells,
    cell_overrides,
    load_finished,
    run_accuracy_benchmark,
)


def test_cells_cover_methods_ablations_and_seeds() -> None:
    cells = build_cells(["demo/sentiment"], [0, 1], ["main", "ablations"], None, Budget(max_steps=7))
    main = [c for c in cells if c.grid == "main"]
    ablations = [c for c in cells if c.grid == "ablations"]
    assert sorted({c.label for c in main}) == sorted(MAIN_METHODS)
    assert len(main) == 2 * len(MAIN_METHODS) and len(ablations) == 2 * len(ABLATIONS)
    assert len({c.key for c in cells}) == len(cells)
    assert cells[0].key == "main|demo/sentiment|moc|seed=0|lr=0.003|steps=7|bs=32|len=128"


def test_bad_grid_and_method_name_the_option() -> None:
    with pytest.raises(AccuracyError, match="--grid 'big' is unknown; choose from main, ablations"):
        build_cells(["demo/sentiment"], [0], ["big"], None, Budget())
    with pytest.raises(AccuracyError, match="--method 'adapter' is unknown for the accuracy grid"):
        build_cells(["demo/sentiment"], [0], ["main"], ["adapter"], Budget())


def test_every_cell_resolves_through_the_real_config_loader(tmp_path: Path) -> None:
    from moc_cli.config import load_run_config

    cells = build_cells(["demo/sentiment"], [3], ["main", "ablations"], None, Budget(max_steps=11))
    by_label = {}
    for cell in cells:
        cfg, _ = load_run_config(None, None, cell_overrides(cell, tmp_path / cell.slug))
        assert cfg.seed == 3 and cfg.training.max_steps == 11 and cfg.task.name == "demo/sentiment"
        assert cfg.training.learning_rate == cell.learning_rate
        by_label[cell.label] = cfg.method
    assert by_label["moc"].variant == "both-shared" and by_label["moc"].alpha == 0.95
    assert by_label["control"].name == "control" and by_label["control"].variant == "both-separate"
    assert by_label["lora"].r == 8 and list(by_label["lora"].target_modules) == ["query", "value"]
    assert by_label["moc alpha=0.5"].alpha == 0.5
    assert by_label["moc top_k=2"].top_k == 2
    assert by_label["moc no balance loss"].aux_loss_coef == 0.0
    assert by_label["moc variant=attn"].variant == "attn"


def _bench_moc_and_lora(
    tmp_path: Path,
    seeds: list[int],
    runner: Callable[[Cell, Path], dict],
    log: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """The sentiment main grid for moc and lora at 5 steps, with `runner` standing in for training."""
    return run_accuracy_benchmark(
        tasks=["demo/sentiment"],
        seeds=seeds,
        grids=["main"],
        methods=["moc", "lora"],
        max_steps=5,
        threads=1,
        output_dir=tmp_path,
        command="python benchmarks/accuracy.py --test",
        cell_runner=runner,
        work_dir=tmp_path / "runs",
        log=log,
    )


def test_finished_cells_are_skipped_on_rerun(tmp_path: Path) -> None:
    ran: list[str] = []

    def fake_runner(cell: Cell, work_dir: Path) -> dict:
        # Stands in for training only; the skip logic around it is what is tested here.
        ran.append(cell.key)
        return {"metric": "accuracy", "value": 0.5 + 0.01 * cell.seed, "trainable_params": 1, "wall_s": 0.0}

    def bench(seeds: list[int]) -> Path:
        return _bench_moc_and_lora(tmp_path, seeds, fake_runner)

    bench([0, 1])
    assert len(ran) == 4
    ran.clear()
    bench([0, 1])
    assert ran == []

    # An interrupted append leaves a truncated last line: ignored, and that cell runs again.
    store = tmp_path / "accuracy.jsonl"
    lines = store.read_text().splitlines()
    store.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    report = bench([0, 1, 2])
    assert ran == [
        json.loads(lines[-1])["key"],
        "main|demo/sentiment|moc|seed=2|lr=0.003|steps=5|bs=32|len=128",
        "main|demo/sentiment|lora|seed=2|lr=0.005|steps=5|bs=32|len=128",
    ]
    assert len(load_finished(store)) == 6
    text = report.read_text()
    assert "| moc | 51.0 ± 1.0 (n=3) | 51.0 |" in text
    assert "`python benchmarks/accuracy.py --test`" in text
    csv_lines = (tmp_path / "accuracy.csv").read_text().splitlines()
    assert csv_lines[0] == "grid,task,label,seed,learning_rate,metric,value,trainable_params,wall_s"
    assert len(csv_lines) == 7
    assert json.loads(store.read_text().splitlines()[0])["budget"]["max_steps"] == 5


def test_cells_table_shows_each_cell_under_its_row_label_and_rate() -> None:
    from moc_cli.bench.accuracy import LEARNING_RATES
    from moc_cli.bench.report import accuracy_markdown

    budget = {"max_steps": 100, "batch_size": 16, "max_length": 64}
    old_rate = LEARNING_RATES["moc"] / 3
    # Stored as plain "moc" before the sweep moved the default: the table must not pass it off as
    # a cell of the default-rate row.
    records = [
        {
            "grid": "main",
            "task": "glue/sst2",
            "label": "moc",
            "seed": 0,
            "learning_rate": old_rate,
            "metric": "accuracy",
            "value": 0.7,
            "trainable_params": 10,
            "wall_s": 1.0,
            "budget": budget,
        },
        {
            "grid": "main",
            "task": "glue/sst2",
            "label": "moc",
            "seed": 1,
            "learning_rate": LEARNING_RATES["moc"],
            "metric": "accuracy",
            "value": 0.8,
            "trainable_params": 10,
            "wall_s": 1.0,
            "budget": budget,
        },
    ]
    text = accuracy_markdown(records)
    assert f"| main | glue/sst2 | moc lr={old_rate:g} | {old_rate:g} | 0 | accuracy | 0.7000 |" in text
    assert f"| main | glue/sst2 | moc | {LEARNING_RATES['moc']:g} | 1 | accuracy | 0.8000 |" in text
    assert "| moc | 80.0 ± 0.0 (n=1) | 80.0 |" in text
    assert "superglue/rte (the same premise/hypothesis pairs and labels as glue/rte)" in text


def test_processes_running_the_same_command_share_the_queue(tmp_path: Path) -> None:
    from moc_cli.bench.accuracy import claim

    ran: list[str] = []
    logged: list[str] = []

    def fake_runner(cell: Cell, work_dir: Path) -> dict:
        ran.append(cell.label)
        return {"metric": "accuracy", "value": 0.5, "trainable_params": 1, "wall_s": 0.0}

    def bench() -> None:
        _bench_moc_and_lora(tmp_path, [0], fake_runner, logged.append)

    moc_cell = build_cells(["demo/sentiment"], [0], ["main"], ["moc"], Budget(max_steps=5))[0]
    # flock conflicts between two open file descriptions even inside one process, so holding the
    # claim here stands in for a second worker that is training the cell.
    with claim(tmp_path / "runs", moc_cell) as mine:
        assert mine
        bench()
    assert ran == ["lora"]
    assert f"[1/2] {moc_cell.key}: running in another process" in logged
    assert not list((tmp_path / "runs").glob("*.lock"))  # released claims leave no files behind
    bench()
    assert ran == ["lora", "moc"]


def test_moc_against_baselines_reports_the_difference_and_whether_it_beats_the_noise() -> None:
    from moc_cli.bench.accuracy import LEARNING_RATES
    from moc_cli.bench.report import comparison_table

    def record(method: str, task: str, seed: int, value: float) -> dict:
        return {
            "grid": "main",
            "task": task,
            "label": method,
            "seed": seed,
            "learning_rate": LEARNING_RATES[method],
            "value": value,
        }

    records = [
        *(record("moc", "glue/sst2", s, v) for s, v in enumerate([0.80, 0.82])),  # 81 ± 1.41
        *(record("control", "glue/sst2", s, v) for s, v in enumerate([0.70, 0.72])),  # 71 ± 1.41
        *(record("lora", "glue/sst2", s, v) for s, v in enumerate([0.80, 0.84])),  # 82 ± 2.83
        record("moc", "glue/rte", 0, 0.55),
        record("control", "glue/rte", 0, 0.50),
    ]
    rows = comparison_table(records)
    assert rows[0] == "| moc minus | glue/rte | glue/sst2 | tasks moc ahead / behind beyond noise |"
    assert rows[2] == "| control | +5.0 (1 seed) | +10.0 (moc ahead) | 1 / 0 of 2 |"
    assert rows[3] == "| lora | – | -1.0 (within noise) | 0 / 0 of 1 |"
