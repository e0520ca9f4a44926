"""The accuracy study's queue: train every unfinished, unclaimed cell in order, record each one (or
its failure) as it finishes, and stop starting cells at a deadline.
"""

from __future__ import annotations

import os
import shlex
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from moc_cli.bench.data import majority_baseline, resolve_model, task_data_dir, train_steps
from moc_cli.bench.errors import AccuracyError
from moc_cli.bench.records import FAILURES_JSONL, RESULTS_JSONL, append_record, claim, load_finished
from moc_cli.bench.runner import CellRunner, Settings, device_name, run_cell
from moc_cli.bench.study import Cell

DEFAULT_GRACE_S = 120.0


def default_work_dir() -> Path:
    base = os.environ.get("MOC_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "moc_cli"
    return root / "bench" / "accuracy-runs"


def utc_time(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def reproduce_command(cell: Cell, settings: Settings) -> str:
    """The command that trains exactly this cell again (into a fresh results folder)."""
    parts = ["python", "benchmarks/accuracy.py", "--cell", cell.key]
    if str(settings.model_path) != str(_packaged_minilm_or_none()):
        parts += ["--model", str(settings.model_path)]
    parts += ["--device", settings.device, "--output-dir", "accuracy-repro"]
    return shlex.join(parts)


@lru_cache(maxsize=1)
def _packaged_minilm_or_none() -> Path | None:
    try:
        return resolve_model(None)
    except AccuracyError:
        return None


def _expected_wall(records: Mapping[str, Mapping[str, Any]], cell: Cell, device: str) -> float | None:
    """Median wall time of finished cells of the same task and method on this kind of device."""
    walls = sorted(
        r["wall_s"]
        for r in records.values()
        if r.get("task") == cell.task
        and r.get("label") == cell.label
        and str(r.get("device", "")).startswith(device)
        and r.get("wall_s")
    )
    return walls[len(walls) // 2] if walls else None


def run_queue(
    cells: Sequence[Cell],
    settings: Settings,
    output_dir: Path,
    scheduled_by: str,
    runner: CellRunner = run_cell,
    log: Callable[[str], None] = print,
    deadline_at: float | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    worker: int | None = None,
) -> dict[str, int]:
    """Train every unfinished, unclaimed cell in order; returns counts (ran, failed, skipped).

    After `deadline_at` (epoch seconds) no cell starts, nor one whose expected wall time (the median
    of finished cells of its task and method here) would end past deadline + grace.
    """
    store = Path(output_dir) / RESULTS_JSONL
    counts = {"ran": 0, "failed": 0, "skipped": 0}
    who = f"[w{worker}] " if worker is not None else ""
    for i, cell in enumerate(cells, 1):
        finished = load_finished(store)
        if cell.key in finished:
            continue
        now = time.time()
        if deadline_at is not None:
            expected = _expected_wall(finished, cell, settings.device)
            if now >= deadline_at or (expected is not None and now + expected > deadline_at + grace_s):
                counts["skipped"] = sum(1 for c in cells[i - 1 :] if c.key not in finished)
                log(f"{who}deadline: {counts['skipped']} cell(s) not started")
                break
        with claim(settings.work_dir, cell) as mine:
            # Re-read under the lock: another process may have finished the cell meanwhile.
            if not mine or cell.key in load_finished(store):
                continue
            data_dir = task_data_dir(cell.task, settings.work_dir)
            majority = majority_baseline(cell.task, data_dir)
            log(f"{who}[{i}/{len(cells)}] start {cell.key}")
            load_start = _load()
            started = time.time()
            try:
                result = runner(cell, settings)
            except (KeyboardInterrupt, AccuracyError):
                raise
            except Exception as exc:  # one broken cell must not stop the queue: record and go on
                counts["failed"] += 1
                append_record(
                    Path(output_dir) / FAILURES_JSONL,
                    {
                        "key": cell.key,
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()[-4000:],
                        "started_utc": utc_time(started),
                        "worker": worker,
                        "scheduled_by": scheduled_by,
                    },
                )
                log(f"{who}FAILED {cell.key}: {type(exc).__name__}: {exc}")
                continue
            record = {
                "key": cell.key,
                "grid": cell.grid,
                "task": cell.task,
                "label": cell.label,
                "seed": cell.seed,
                "learning_rate": cell.learning_rate,
                "precision": cell.precision,
                "model_tag": cell.model_tag,
                "max_steps": cell.max_steps,
                "method_overrides": list(cell.overrides),
                "budget": asdict(cell.budget),
                "train_steps": train_steps(cell, data_dir),
                "majority": majority,
                **result,
                "started_utc": utc_time(started),
                "finished_utc": utc_time(),
                "threads": settings.threads,
                "workers": settings.workers,
                "device": result.get("device") or device_name(),
                "logical_cpus": os.cpu_count(),
                "load_average_start": load_start,
                "load_average_end": _load(),
                "model_path": str(settings.model_path),
                "command": reproduce_command(cell, settings),
                "scheduled_by": scheduled_by,
            }
            append_record(store, record)
            counts["ran"] += 1
        value = record.get("value")
        shown = "diverged" if value is None else f"{record.get('metric')} = {value:.4f}"
        log(f"{who}done {cell.key}: {shown} ({record.get('wall_s') or 0:.0f} s)")
    return counts
