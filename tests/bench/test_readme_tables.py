"""The README's benchmark tables are generated from the committed results, and rows survive rate changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.readme import (
    ReadmeError,
    efficiency_block,
    efficiency_targets_block,
    render_readme,
    replace_block,
)
from benchmarks.report import _loaded
from moc_cli.bench import load_finished, load_runs

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def test_committed_readme_tables_equal_what_the_results_produce() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert render_readme(readme, RESULTS) == readme, (
        "README.md benchmark tables differ from benchmarks/results/: run python benchmarks/readme_tables.py"
    )


def test_check_mode_exits_1_naming_the_fix_when_a_figure_is_hand_edited(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- generated:efficiency -->")
    edited = readme[:start] + readme[start:].replace(
        "| Control, FFN | 74,498 |", "| Control, FFN | 74,499 |", 1
    )
    assert edited != readme
    (tmp_path / "README.md").write_text(edited, encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "readme_tables.py"),
            "--readme",
            str(tmp_path / "README.md"),
            "--check",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "benchmark tables are out of date; run python benchmarks/readme_tables.py" in done.stdout


def test_missing_markers_name_the_block() -> None:
    with pytest.raises(ReadmeError, match=r"README.md has no `<!-- generated:accuracy -->` \.\.\. "):
        replace_block("# no markers\n", "accuracy", "table")
    assert replace_block("a\n<!-- generated:x -->\n<!-- /generated:x -->\n", "x", "T") == (
        "a\n<!-- generated:x -->\nT\n<!-- /generated:x -->\n"
    )


def test_moc_rows_are_compared_with_control_on_the_same_sites() -> None:
    runs = load_runs(RESULTS / "efficiency.json")
    block = efficiency_block(runs)
    run = max(
        (r for r in runs if r["model"] == "minilm" and r["seq_len"] == 128), key=lambda r: r["steps"] > 0
    )
    saved = {m["method"]: m["saved_bytes"] for m in run["methods"]}
    row = next(line for line in block.splitlines() if line.startswith("| **MoC both-shared** |"))
    assert row.split(" | ")[3] == f"{saved['moc-both-shared'] / saved['control-both']:.3f}"


def test_target_rows_pair_each_moc_variant_with_its_same_site_control_round_by_round() -> None:
    run = {
        "model": "m",
        "batch_size": 2,
        "seq_len": 8,
        "steps": 2,
        "rounds": 2,
        "date_utc": "2026-11-29 01:28:43Z",
        "machine": {"load_average_start": [0.5], "load_average_after_timing": [0.5], "logical_cpus": 2},
        "methods": [
            {"method": "control", "trainable_params": 1, "saved_bytes": 100, "peak_bytes": None,
             "median_step_s": 1.5, "step_times": [1.0, 1.0, 2.0, 2.0]},
            {"method": "moc-ffn", "trainable_params": 1, "saved_bytes": 101, "peak_bytes": None,
             "median_step_s": 1.6, "step_times": [1.1, 1.1, 2.2, 2.2]},
        ],
    }  # fmt: skip
    memory_only = {**run, "steps": 0, "methods": [{**m, "step_times": []} for m in run["methods"]]}
    lines = efficiency_targets_block([run, memory_only]).splitlines()
    assert lines[2] == "| m | 2 × 8 | 1.010× / 1.10× | – | – | – | 2 rounds × 2 steps | 2026-11-29 01:28 |"
    assert lines[3] == "| m | 2 × 8 | 1.010× / – | – | – | – | not timed (memory only) | 2026-11-29 01:28 |"
    with pytest.raises(ReadmeError, match="efficiency.json has no runs; run benchmarks/efficiency.py first"):
        efficiency_targets_block([])


def test_stored_results_load_with_one_record_per_cell() -> None:
    lines = (RESULTS / "accuracy.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert len(load_finished(RESULTS / "accuracy.jsonl")) == len({r["key"] for r in records})


@pytest.mark.parametrize(
    ("start", "after", "loaded"),
    [
        (1.7, 2.02, False),  # the benchmark's own 2 threads (start: the previous run's tail)
        (0.3, 2.5, False),
        (0.3, 2.51, True),  # more than half a core beyond its own threads
        (2.1, 2.0, True),  # something else filled the machine before the run started
    ],
)
def test_a_run_counts_as_loaded_only_beyond_the_benchmarks_own_threads(
    start: float, after: float, loaded: bool
) -> None:
    machine = {"logical_cpus": 2, "torch_threads": 2, "load_average_start": [start, 0, 0]}
    assert _loaded({"machine": {**machine, "load_average_after_timing": [after, 0, 0]}}) is loaded
    # runs recorded before the after-timing figure existed: the load at the end
    assert _loaded({"machine": {**machine, "load_average_end": [after, 0, 0]}}) is loaded
