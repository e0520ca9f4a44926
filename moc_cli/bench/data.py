"""The accuracy study's data and model: where a task's splits live, its majority-class baseline,
the optimizer steps a cell takes, and the model folder a study trains (with its tag).
"""

from __future__ import annotations

import json
import math
import os
from functools import cache
from pathlib import Path
from typing import Any

from moc_cli.bench.errors import AccuracyError
from moc_cli.bench.locks import file_lock
from moc_cli.bench.study import Cell
from moc_cli.bench.workload import MINILM_URI


def shared_dir() -> Path:
    """`$MOC_SHARED_DIR`, else the `shared/` sibling of the repository root."""
    env = os.environ.get("MOC_SHARED_DIR")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2].parent / "shared"


def _has_splits(folder: Path) -> bool:
    return (folder / "train.jsonl").is_file() and (folder / "validation.jsonl").is_file()


def task_data_dir(task: str, work_dir: Path) -> Path:
    """The folder with the task's `train.jsonl` and `validation.jsonl`.

    Looked up under `$MOC_SHARED_DIR/data/<task>` (or `$MOC_SHARED_DIR/<task>`, when the variable
    names the data folder itself). demo/sentiment falls back to the packaged Rotten Tomatoes data,
    exported once with the seed-0 split: its packaged split otherwise follows the run seed, and the
    study scores every seed on the same validation rows.
    """
    root = shared_dir()
    candidates = [root / "data" / task, root / task]
    for folder in candidates:
        if _has_splits(folder):
            return folder
    if task == "demo/sentiment":
        return _export_demo_sentiment(Path(work_dir) / "data" / task)
    raise AccuracyError(
        f"--task {task}: no train.jsonl and validation.jsonl in {candidates[0]} or {candidates[1]}; set "
        "MOC_SHARED_DIR to the folder holding data/<suite>/<task>/"
    )


def _export_demo_sentiment(folder: Path) -> Path:
    if _has_splits(folder):
        return folder
    import datasets

    from moc_cli.assets import rotten_tomatoes_splits

    datasets.disable_progress_bars()  # one bar per split in every worker's log otherwise
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".export.lock"):
        if not _has_splits(folder):
            for split, ds in rotten_tomatoes_splits(seed=0).items():
                tmp = folder / f".{split}.jsonl.tmp"
                ds.to_json(tmp)
                tmp.replace(folder / f"{split}.jsonl")
    return folder


def _jsonl_labels(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line).get("label") for line in fh if line.strip()]


@cache
def _line_count(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


@cache
def majority_baseline(task: str, data_dir: Path) -> dict[str, Any]:
    """The task's main metric for always predicting the validation split's most frequent label."""
    import numpy as np

    from moc_cli.tasks import get_task

    labels = [x for x in _jsonl_labels(Path(data_dir) / "validation.jsonl") if x is not None and x != -1]
    if not labels:
        raise AccuracyError(f"--task {task}: {data_dir / 'validation.jsonl'} has no labelled rows")
    counts: dict[Any, int] = {}
    for x in labels:
        counts[x] = counts.get(x, 0) + 1
    # Most frequent; ties go to the smaller label, so the figure is deterministic.
    majority = min(counts, key=lambda x: (-counts[x], x))
    t = get_task(task)
    value = t.metrics(np.full(len(labels), majority), np.asarray(labels))[t.main_metric]
    names = t.label_names or []
    return {
        "metric": t.main_metric,
        "value": float(value),
        "class": names[majority] if isinstance(majority, int) and majority < len(names) else str(majority),
        "n": len(labels),
    }


def train_steps(cell: Cell, data_dir: Path) -> int:
    """Optimizer steps the cell takes (what Trainer computes from epochs, rows and batch size)."""
    rows = _line_count(Path(data_dir) / "train.jsonl")
    if cell.budget.train_rows:
        rows = min(rows, cell.budget.train_rows)
    steps = math.ceil(cell.budget.epochs * math.ceil(rows / cell.budget.batch_size))
    return min(steps, cell.max_steps) if cell.max_steps else steps


def model_tag(model_path: str | Path) -> str:
    """`<model_type>-L<layers>-d<hidden>` from the model folder's config.json."""
    folder = Path(model_path)
    config = folder / "config.json"
    if not config.is_file():
        raise AccuracyError(
            f"--model {model_path}: no config.json there; pass a local model folder (as written by "
            "save_pretrained) or leave --model out for the packaged MiniLM-L6"
        )
    data = json.loads(config.read_text(encoding="utf-8"))
    layers = data.get("num_hidden_layers") or data.get("n_layer")
    hidden = data.get("hidden_size") or data.get("n_embd")
    return f"{data.get('model_type', 'model')}-L{layers}-d{hidden}"


def resolve_model(model: str | Path | None) -> Path:
    """The local folder of `--model` (default: the packaged MiniLM-L6)."""
    if model is None or str(model) == MINILM_URI:
        from moc_cli.assets import resolve_model_source

        try:
            return Path(resolve_model_source(MINILM_URI))
        except Exception as exc:  # AssetNotInstalledError carries the pip command
            raise AccuracyError(
                f"--model: the packaged MiniLM-L6 is not available ({exc}); pass --model PATH"
            ) from exc
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise AccuracyError(
            f"--model {model}: no such folder; pass a local model folder (with config.json) or leave "
            "--model out for the packaged MiniLM-L6"
        )
    return folder.resolve()
