"""The accuracy study's protocol: tasks and budgets, methods and ablations, the three grids, cell
keys, and the learning-rate choice read back from the sweep.

A *cell* is one training run: (task, method or ablation label, seed, learning rate) at the task's
budget, precision and model. Its identity is its `key`; the grid that scheduled it is not part of
the key, so a cell shared by two grids (the sweep's seed-0 cell at the chosen rate is the main
grid's seed-0 cell; the ablations' reference is the main grid's MoC) trains once.

Three grids (`GRIDS`):

- `sweep`: every method at each of its candidate rates (`SWEEP_RATES`), seed 0, on `SWEEP_TASKS`;
  the best rate per method (`select_learning_rates`) is read back from the stored cells.
- `main`: every method at its swept rate on `TASKS`, `MAIN_SEEDS[method]` seeds.
- `ablations`: MoC with one knob changed (`ABLATIONS`) on `ABLATION_TASKS`, `ABLATION_SEEDS` seeds.

Only definitions and arithmetic: nothing here imports torch or trains.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from moc_cli.bench.errors import AccuracyError

GRIDS = ("main", "ablations", "sweep")


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
# carry fixed bars (Matthews 0.25, accuracy 85 %); SST-2 trains on its first 10,000 rows.
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
MAIN_SEEDS: dict[str, int] = {"moc": 5, "control": 5, "lora-qv": 5, "lora-all": 3, "dora": 3, "full": 3}

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

ABLATION_TASKS = ("glue/rte", "glue/mrpc")
ABLATION_SEEDS = 3
# One knob of MoC changed per row, added after MOC_OVERRIDES; the reference row is `moc` itself.
# The last two change the method itself rather than a setting: a learnable α and a
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


@dataclass(frozen=True)
class Context:
    """What every cell of one study shares: precision, model, and an optional smoke cap."""

    precision: str
    model_tag: str
    max_steps: int | None = None


def make_cell(grid: str, task: str, label: str, seed: int, rate: float, ctx: Context) -> Cell:
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
        make_cell("sweep", task, m, SWEEP_SEED, rate, ctx)
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
        make_cell("main", task, m, seed, rates[m], ctx)
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
        make_cell("ablations", task, label, seed, moc_rate, ctx)
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
                key = make_cell("sweep", task, m, SWEEP_SEED, rate, ctx).key
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
            "moc_cli/bench/study.py"
        )
    return {m: float(c.rate) for m, c in choices.items() if c.rate is not None}
