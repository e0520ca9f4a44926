"""Accuracy study: converged, paired, multi-seed comparison of MoC with Control, LoRA, DoRA and full
fine-tuning, trained by the project's own runner (what `moc train` does).

`run_accuracy_benchmark` plans the requested grids' cells (`study`: the protocol, grids and cell
keys), skips the finished ones (`records`: `accuracy.jsonl` and its locks), trains the rest in this
process (`cell_queue`, each cell by `runner.run_cell`) or in worker subprocesses (`workers`), and
hands every stored cell to a report writer: `moc bench` writes the plain tables of `tables.py`,
`benchmarks/accuracy.py` the study report.

Finished cells are appended to `accuracy.jsonl` (one JSON line each, under a file lock) and skipped
on rerun; every cell is claimed with an OS file lock while it trains, so several processes (or
`workers` subprocesses) share one queue. Seeds are paired: a seed fixes the data order, the head
initialisation and the subsample for every method alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moc_cli.bench.cell_queue import DEFAULT_GRACE_S, default_work_dir, run_queue
from moc_cli.bench.data import majority_baseline, model_tag, resolve_model, task_data_dir, train_steps
from moc_cli.bench.errors import AccuracyError
from moc_cli.bench.records import RESULTS_JSONL, load_finished, merge_records
from moc_cli.bench.runner import CellRunner, Settings, run_cell
from moc_cli.bench.study import (
    GRIDS,
    METHODS,
    SWEEP_RATES,
    TASKS,
    Cell,
    Context,
    ablation_cells,
    cell_from_key,
    chosen_rates,
    main_cells,
    select_learning_rates,
    sweep_cells,
)
from moc_cli.bench.tables import write_accuracy_tables
from moc_cli.bench.workers import run_workers

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32", "bf16")

ReportWriter = Callable[[list[dict[str, Any]], Path], Path]


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise AccuracyError(f"--device {device!r} is unknown; choose from {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise AccuracyError("--device cuda: torch sees no CUDA device here; use --device cpu (or auto)")
    return "cuda" if available else "cpu"


def resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise AccuracyError(f"--precision {precision!r} is unknown; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        # bf16 autocast is the GPU's fast path; on CPUs it is slower than fp32.
        return "bf16" if device == "cuda" else "fp32"
    return precision


def _check_choices(option: str, given: Sequence[str] | None, known: Sequence[str], what: str) -> None:
    for item in given or ():
        if item not in known:
            raise AccuracyError(f"{option} {item!r} is not {what}; choose from {', '.join(known)}")


def build_cells(
    grids: Sequence[str],
    rates: Mapping[str, float],
    ctx: Context,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Cell]:
    """The cells of `grids` (sweep first) at the given per-method `rates`, each key once."""
    cells: list[Cell] = []
    if "sweep" in grids:
        cells += sweep_cells(ctx, tasks, methods)
    if "main" in grids:
        cells += main_cells(ctx, rates, tasks, methods, seeds)
    if "ablations" in grids:
        cells += ablation_cells(ctx, rates["moc"], tasks, seeds)
    unique: dict[str, Cell] = {}
    for cell in cells:
        unique.setdefault(cell.key, cell)
    return list(unique.values())


def plan_cells(
    grids: Sequence[str],
    records: Mapping[str, Mapping[str, Any]],
    ctx: Context,
    store: Path,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    unswept: Callable[[str], None] | None = None,
) -> list[Cell]:
    """The cells of `grids` (sweep first), each once; main and ablations need the finished sweep,
    whose chosen rates are read from `records`. With `unswept` (dry runs), a method whose sweep is
    incomplete takes its first candidate rate instead, and `unswept` is told which methods did."""
    rates: dict[str, float] = {}
    for grid, wanted in (("main", methods), ("ablations", ["moc"])):
        if grid not in grids:
            continue
        choices = select_learning_rates(records, ctx, wanted)
        if unswept is not None:
            missing = [m for m, c in choices.items() if c.rate is None or c.missing]
            if missing:
                unswept(", ".join(missing))
            rates.update({m: c.rate if m not in missing else SWEEP_RATES[m][0] for m, c in choices.items()})
        else:
            rates.update(chosen_rates(choices, grid, store))
    return build_cells(grids, rates, ctx, tasks, methods, seeds)


def run_accuracy_benchmark(
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    grids: Sequence[str] = ("main",),
    methods: Sequence[str] | None = None,
    max_steps: int | None = None,
    threads: int = 1,
    output_dir: Path = Path("benchmarks/results"),
    command: str = "",
    work_dir: Path | None = None,
    cell_runner: CellRunner = run_cell,
    log: Callable[[str], None] = print,
    model: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    workers: int = 0,
    deadline_s: float | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    cells: Sequence[str] | None = None,
    merge: Sequence[Path] = (),
    keep_weights: bool = False,
    log_dir: Path | None = None,
    dry_run: bool = False,
    write_report: ReportWriter = write_accuracy_tables,
) -> Path:
    """Run the requested grids' unfinished cells, then `write_report(records, output_dir)` over every
    stored cell (default: the plain tables) and return what it returns; a dry run writes nothing and
    returns the store's path.

    `tasks`, `methods` and `seeds` narrow the grids (None: each grid's own definition); `cells`
    runs exactly those stored keys instead. `max_steps` caps every cell (smoke runs; such cells
    carry `cap=N` in their key and never enter the study's tables). `workers` > 0 trains that many
    cells at once in subprocesses; `deadline_s` stops starting cells that many seconds from now.
    """
    started = time.time()
    unknown = [g for g in grids if g not in GRIDS]
    if unknown:
        raise AccuracyError(f"--grid {unknown[0]!r} is unknown; choose from {', '.join(GRIDS)}")
    _check_choices("--task", tasks, list(TASKS), "a task of the accuracy study")
    _check_choices("--method", methods, list(METHODS), "a method of the accuracy study")
    if workers < 0:
        raise AccuracyError(f"--workers {workers}: use 0 (cells run in this process) or a positive count")
    if threads < 1:
        raise AccuracyError(f"--threads {threads}: use 1 or more torch threads per cell")
    if max_steps is not None and max_steps < 1:
        raise AccuracyError(
            f"--max-steps {max_steps}: use a positive step cap, or leave it out for the full budget"
        )
    if deadline_s is not None and deadline_s <= 0:
        raise AccuracyError(f"--deadline-s {deadline_s:g}: use a positive number of seconds")
    if grace_s < 0:
        raise AccuracyError(f"--grace-s {grace_s:g}: use 0 or more seconds")
    if any(s < 0 for s in seeds or ()):
        raise AccuracyError("--seed takes non-negative integers")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    store = output_dir / RESULTS_JSONL
    if merge:
        log(f"merged {merge_records(store, merge)} cell(s) from {', '.join(map(str, merge))}")
    work_dir = Path(work_dir) if work_dir else default_work_dir()
    model_path = resolve_model(model)
    tag = model_tag(model_path)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    ctx = Context(prec, tag, max_steps)
    settings = Settings(work_dir, model_path, dev, threads, keep_weights, workers)
    deadline_at = started + deadline_s if deadline_s is not None else None

    def unswept(names: str) -> None:
        log(
            f"dry run: the sweep of {names} is not finished; their cells are listed at their first candidate rate"
        )

    note = unswept if dry_run else None
    if cells:
        chosen = [cell_from_key(k) for k in cells]
        for c in chosen:
            if c.model_tag != tag:
                raise AccuracyError(
                    f"--cell {c.key!r} was trained on a {c.model_tag} model, but --model resolves to {tag} "
                    f"({model_path}); pass --model with a folder of that model"
                )
        phases = [chosen]
    elif "sweep" in grids and ("main" in grids or "ablations" in grids):
        phases = [plan_cells(["sweep"], load_finished(store), ctx, store, tasks, methods, seeds, note), []]
    else:
        phases = [plan_cells(grids, load_finished(store), ctx, store, tasks, methods, seeds, note)]

    for n, phase in enumerate(phases):
        if n == 1:  # main/ablations after this command's own sweep: rates from what it stored
            if deadline_at is not None and time.time() >= deadline_at:
                log("deadline passed after the sweep: main/ablations cells not started")
                break
            later = [g for g in grids if g != "sweep"]
            try:
                phase = plan_cells(later, load_finished(store), ctx, store, tasks, methods, seeds, note)
            except AccuracyError:
                # The sweep ran but is incomplete (failed cells): its cells still get a report.
                if not dry_run:
                    write_report(list(load_finished(store).values()), output_dir)
                raise
        _run_phase(
            phase,
            settings,
            output_dir,
            store,
            command,
            cell_runner,
            log,
            deadline_at,
            grace_s,
            log_dir,
            dry_run,
        )
    if dry_run:
        return store
    return write_report(list(load_finished(store).values()), output_dir)


def _run_phase(
    cells: Sequence[Cell],
    settings: Settings,
    output_dir: Path,
    store: Path,
    command: str,
    runner: CellRunner,
    log: Callable[[str], None],
    deadline_at: float | None,
    grace_s: float,
    log_dir: Path | None,
    dry_run: bool,
) -> None:
    done = load_finished(store)
    todo = [c for c in cells if c.key not in done]
    steps = 0
    for task in dict.fromkeys(c.task for c in cells):
        data_dir = task_data_dir(task, settings.work_dir)
        m = majority_baseline(task, data_dir)
        task_cells = [c for c in todo if c.task == task]
        task_steps = sum(train_steps(c, data_dir) for c in task_cells)
        steps += task_steps
        log(
            f"{task}: majority class {m['class']!r} scores {m['metric']} {m['value']:.4f} on {m['n']} "
            f"validation rows; {len(task_cells)} cell(s) to run, {task_steps:,} steps"
        )
    log(
        f"{len(cells)} cells requested, {len(cells) - len(todo)} already finished, {len(todo)} to run "
        f"({steps:,} training steps) on {settings.device}"
    )
    if dry_run:
        for c in todo:
            log(f"  {c.key}")
        return
    if not todo:
        return
    if settings.workers > 0:
        counts = run_workers(
            todo, settings, output_dir, command, settings.workers, runner, log, deadline_at, grace_s, log_dir
        )
    else:
        counts = run_queue(todo, settings, output_dir, command, runner, log, deadline_at, grace_s)
    log(f"phase finished: {counts}")
