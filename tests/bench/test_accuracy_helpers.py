"""Shared pieces of the accuracy-study tests: tiny task files, stored-cell records, fake cell runners.

The fake runners stand in for training only (the queue, grids, statistics and report around them
are what the tests check); they are top-level functions so that worker subprocesses can load them
from this file. Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from moc_cli.bench.runner import Settings
from moc_cli.bench.study import TASKS, Cell, Context, make_cell

CTX = Context("fp32", "bert-L2-d32")
# 64 train rows and 4 validation rows (three of label 1) per task: the majority class scores 0.75
# accuracy (Matthews 0 on CoLA).
TRAIN_ROWS = 64
VALIDATION_LABELS = (1, 1, 0, 1)


def write_task_files(root: Path) -> Path:
    """`root/data/<suite>/<task>/{train,validation}.jsonl` for every task of the study; returns root."""
    for task in TASKS:
        folder = root / "data" / task
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"sentence": f"row {i}", "label": i % 2, "idx": i} for i in range(TRAIN_ROWS)]
        (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        val = [{"sentence": f"v {i}", "label": y, "idx": i} for i, y in enumerate(VALIDATION_LABELS)]
        (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    return root


def write_model_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps({"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 32})
    )
    return folder


def record(
    label: str, task: str, seed: int, rate: float, value: float | None, majority: float | None = None
) -> dict:
    """A stored cell of the CTX study, as run_queue writes it (only the fields the report reads).
    The majority baseline defaults to the tiny task files' (0.75; Matthews 0 on CoLA)."""
    cell = make_cell("main", task, label, seed, rate, CTX)
    metric = "matthews_correlation" if task == "glue/cola" else "accuracy"
    if majority is None:
        majority = 0.0 if task == "glue/cola" else 0.75
    return {
        "key": cell.key,
        "grid": "main",
        "task": task,
        "label": label,
        "seed": seed,
        "learning_rate": rate,
        "precision": CTX.precision,
        "model_tag": CTX.model_tag,
        "max_steps": None,
        "metric": metric,
        "value": value,
        "majority": {"metric": metric, "value": majority, "class": "yes", "n": 4},
        "train_steps": 10,
        "wall_s": 60.0,
        "threads": 1,
        "workers": 14,
        "device": "cuda (NVIDIA H200)",
        "logical_cpus": 16,
        "load_average_start": [3.0, 2.0, 1.0],
        "model_path": "/m",
        "command": f"python benchmarks/accuracy.py --cell '{cell.key}'",
        "scheduled_by": "python benchmarks/accuracy.py --grid main",
    }


# Best rates of the fake study: every PEFT method peaks at 1e-3, full fine-tuning at 1e-4.
BEST_RATE = {"full": 1e-4}
BASE = {
    "glue/cola": 0.30,
    "glue/mrpc": 0.85,
    "glue/rte": 0.85,
    "glue/sst2": 0.90,
    "superglue/cb": 0.90,
    "superglue/copa": 0.76,  # below its bar (majority 0.75 + 0.05): an untrained task
    "superglue/wsc": 0.85,
    "demo/sentiment": 0.85,
}
OFFSET = {"moc": 0.01, "control": 0.0, "lora-qv": 0.005, "lora-all": 0.008, "dora": 0.006, "full": 0.02}


def fake_value(cell: Cell) -> float:
    peak = BEST_RATE.get(cell.label, 1e-3)
    noise = ((cell.seed * 7 + len(cell.label)) % 5 - 2) / 1000
    return (
        BASE[cell.task]
        + OFFSET.get(cell.label, 0.0)
        - 0.02 * abs(math.log10(cell.learning_rate / peak))
        + noise
    )


def fake_runner(cell: Cell, settings: Settings) -> dict[str, Any]:
    """Instant: a deterministic score per cell; logs each call to $ACC_TEST_CALLS when set."""
    calls = os.environ.get("ACC_TEST_CALLS")
    if calls:
        with open(calls, "a") as fh:
            fh.write(f"{os.getpid()} {cell.key}\n")
    return {
        "status": "ok",
        "metric": "accuracy",
        "value": fake_value(cell),
        "wall_s": 1.0,
        "device": "cpu (test)",
    }


def slow_runner(cell: Cell, settings: Settings) -> dict[str, Any]:
    """Sleeps $ACC_TEST_SLEEP seconds per cell (deadline and stop tests)."""
    time.sleep(float(os.environ.get("ACC_TEST_SLEEP", "30")))
    return fake_runner(cell, settings)


def failing_runner(cell: Cell, settings: Settings) -> dict[str, Any]:
    if cell.label == "control":
        raise RuntimeError("boom")
    return fake_runner(cell, settings)


def env_runner(cell: Cell, settings: Settings) -> dict[str, Any]:
    """The fake score plus what the worker's environment set: threads and GPU visibility."""
    return {
        **fake_runner(cell, settings),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }
