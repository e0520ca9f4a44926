"""What `moc bench` runs: measuring and storing the efficiency and accuracy benchmarks.

- efficiency: `workload` (model, batch, step, saved bytes), `timing` (interleaved ABBA rounds),
  `rss` (peak RSS in a fresh subprocess), `store` (`efficiency.json`), run by `efficiency`;
- accuracy: `study` (the protocol, grids, cell keys, the sweep's rate choice), `data` (task splits,
  majority baselines, the model), `runner` (one cell through `moc train`'s runner), `records`
  (`accuracy.jsonl` and its locks), `cell_queue` and `workers` (the shared queue), run by `accuracy`;
- `tables`: the plain Markdown/CSV tables `moc bench` writes of what was measured;
- `methods`: the benchmarked configurations of the methods in `moc_cli.methods`.

The study reports, README tables and the kernel benchmark are scripts in `benchmarks/`, which use
the names exported here. Submodules load on first use, so `import moc_cli.bench` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moc_cli._lazy import lazy_exports

if TYPE_CHECKING:
    from moc_cli.bench.accuracy import run_accuracy_benchmark
    from moc_cli.bench.efficiency import run_efficiency_benchmark
    from moc_cli.bench.errors import AccuracyError, EfficiencyError
    from moc_cli.bench.methods import (
        METHOD_DESCRIPTIONS,
        METHOD_NAMES,
        REFERENCE_METHOD,
        SAME_SITE_CONTROL,
        method_sections,
    )
    from moc_cli.bench.records import RESULTS_JSONL, load_finished, merge_records
    from moc_cli.bench.store import RESULTS_JSON, load_runs
    from moc_cli.bench.study import (
        ABLATION_REFERENCE,
        ABLATION_SEEDS,
        ABLATION_TASKS,
        ABLATIONS,
        BAR_MARGIN,
        MAIN_SEEDS,
        METHODS,
        SWEEP_RATES,
        SWEEP_SEED,
        SWEEP_TASKS,
        TASKS,
        Context,
        make_cell,
        select_learning_rates,
        sweep_cells,
    )
    from moc_cli.bench.tables import (
        MIB,
        format_or_dash,
        with_ratios,
        write_accuracy_csv,
        write_accuracy_files,
        write_accuracy_tables,
        write_efficiency_tables,
    )
    from moc_cli.bench.timing import paired_time_ratio
    from moc_cli.bench.workers import load_runner

_LAZY = {
    "run_efficiency_benchmark": "moc_cli.bench.efficiency",
    "run_accuracy_benchmark": "moc_cli.bench.accuracy",
    "AccuracyError": "moc_cli.bench.errors",
    "EfficiencyError": "moc_cli.bench.errors",
    "RESULTS_JSON": "moc_cli.bench.store",
    "load_runs": "moc_cli.bench.store",
    "RESULTS_JSONL": "moc_cli.bench.records",
    "load_finished": "moc_cli.bench.records",
    "merge_records": "moc_cli.bench.records",
    "load_runner": "moc_cli.bench.workers",
    "paired_time_ratio": "moc_cli.bench.timing",
    **dict.fromkeys(
        ("METHOD_DESCRIPTIONS", "METHOD_NAMES", "REFERENCE_METHOD", "SAME_SITE_CONTROL", "method_sections"),
        "moc_cli.bench.methods",
    ),
    **dict.fromkeys(
        (
            "MIB",
            "format_or_dash",
            "with_ratios",
            "write_accuracy_csv",
            "write_accuracy_files",
            "write_accuracy_tables",
            "write_efficiency_tables",
        ),
        "moc_cli.bench.tables",
    ),
    **dict.fromkeys(
        (
            "ABLATION_REFERENCE",
            "ABLATION_SEEDS",
            "ABLATION_TASKS",
            "ABLATIONS",
            "BAR_MARGIN",
            "MAIN_SEEDS",
            "METHODS",
            "SWEEP_RATES",
            "SWEEP_SEED",
            "SWEEP_TASKS",
            "TASKS",
            "Context",
            "make_cell",
            "select_learning_rates",
            "sweep_cells",
        ),
        "moc_cli.bench.study",
    ),
}

__all__ = [  # noqa: F822 (resolved lazily by __getattr__)
    "ABLATIONS",
    "ABLATION_REFERENCE",
    "ABLATION_SEEDS",
    "ABLATION_TASKS",
    "AccuracyError",
    "BAR_MARGIN",
    "Context",
    "EfficiencyError",
    "MAIN_SEEDS",
    "METHODS",
    "METHOD_DESCRIPTIONS",
    "MIB",
    "METHOD_NAMES",
    "REFERENCE_METHOD",
    "RESULTS_JSON",
    "RESULTS_JSONL",
    "SAME_SITE_CONTROL",
    "SWEEP_RATES",
    "SWEEP_SEED",
    "SWEEP_TASKS",
    "TASKS",
    "format_or_dash",
    "load_finished",
    "load_runner",
    "load_runs",
    "make_cell",
    "merge_records",
    "method_sections",
    "paired_time_ratio",
    "run_accuracy_benchmark",
    "run_efficiency_benchmark",
    "select_learning_rates",
    "sweep_cells",
    "with_ratios",
    "write_accuracy_csv",
    "write_accuracy_files",
    "write_accuracy_tables",
    "write_efficiency_tables",
]


__getattr__ = lazy_exports(__name__, _LAZY)
