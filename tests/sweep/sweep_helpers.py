"""Builders for the sweep tests: tiny data, the fixed overrides of a tiny trial, a stand-in runner."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

GOOD = ["good", "great", "fine", "nice", "lovely"]
BAD = ["bad", "awful", "poor", "sad", "dull"]


def write_sst2(folder: Path, n_train: int = 32, n_eval: int = 8) -> Path:
    """SST-2-shaped train/validation JSON Lines (sentence, label, idx) of 4-word reviews."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_eval)):
        rows = [
            {
                "sentence": " ".join((GOOD if i % 2 else BAD)[(i + k) % 5] for k in range(4)),
                "label": i % 2,
                "idx": i,
            }
            for i in range(n)
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def trial_overrides(model: Path, data: Path) -> list[str]:
    """Fixed overrides that make a glue/sst2 trial take a second or two on a tiny BERT."""
    return [
        f"model.name_or_path={model}",
        f"data.path={data}",
        "task.max_length=16",
        "training.max_steps=2",
        "training.per_device_train_batch_size=8",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "output.progress=none",
    ]


def fake_accuracy(params: dict[str, Any]) -> float:
    """A smooth score of the searched values (highest at learning_rate 1e-3, r 8)."""
    lr = float(params.get("training", {}).get("learning_rate", 1e-3))
    r = int(params.get("method", {}).get("r", 8))
    return round(1.0 / (1.0 + abs(math.log10(lr) + 3.0) + abs(r - 8) / 8), 6)


class FakeRunner:
    """Stands in for `moc_cli.training.run_training`: writes the run folder's eval/results.json with
    `fake_accuracy` of the trial's config (no model is loaded). `interrupt_first` raises Ctrl-C's
    exception in the first call, `sleep` holds each trial (to overlap workers or be killed in one)."""

    def __init__(self, interrupt_first: bool = False, sleep: float = 0.0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.interrupt_first = interrupt_first
        self.sleep = sleep

    def __call__(self, cfg: Any, provenance: dict[str, str], resume: str | None) -> Path:
        data = cfg.model_dump()
        self.calls.append(data)
        if self.interrupt_first and len(self.calls) == 1:
            from moc_cli.training.errors import RunInterrupted

            raise RunInterrupted(None)
        time.sleep(self.sleep)
        root = Path(data["output"]["dir"])
        (root / "eval").mkdir(parents=True, exist_ok=True)
        value = fake_accuracy(data)
        results = {
            "task": data["task"]["name"],
            "main_metric": "eval_accuracy",
            "greater_is_better": True,
            "metrics": {"validation": {"eval_accuracy": value}},
            "summary": {
                "main_metric": "eval_accuracy",
                "main_metric_value": value,
                "eval_split": "validation",
            },
        }
        (root / "eval" / "results.json").write_text(json.dumps(results), encoding="utf-8")
        return root
