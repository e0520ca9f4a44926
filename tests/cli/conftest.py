"""Fixtures for CLI tests: a private recipe tree and a recording training runner."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moc_cli.testing import TINY_RECIPE, packaged_recipes_at, write_recipe_tree


@pytest.fixture
def recipes_root(tmp_path: Path, hub_cache: Path) -> Iterator[Path]:
    """Point packaged-recipe lookup at a temporary tree: glue/sst2, glue/cola, demo/sentiment
    (their Hub model is found in the `hub_cache`, as pre-flight requires)."""
    recipes = {
        "glue/sst2": TINY_RECIPE,
        "glue/cola": {**TINY_RECIPE, "description": "CoLA.", "task": {"name": "glue/cola"}},
        "demo/sentiment": {**TINY_RECIPE, "description": "Demo sentiment."},
    }
    with packaged_recipes_at(write_recipe_tree(tmp_path / "recipes", recipes)) as root:
        yield root


class RecordingRunner:
    """Stands in for `moc_cli.training` so CLI tests exercise argument handling and exit codes only
    (the real train -> eval run is covered by the training tests)."""

    def __init__(self, tmp_path: Path) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.raise_exc: BaseException | None = None
        self.run_dir = tmp_path / "run"
        self.metrics: dict[str, Any] = {"accuracy": 0.875, "eval_loss": 0.3125, "epoch": 1}

    def run_training(self, cfg: Any, provenance: dict[str, str], resume: str | None) -> Path:
        self.calls.append(("train", (cfg, provenance, resume)))
        if self.raise_exc is not None:
            raise self.raise_exc
        return self.run_dir

    def run_eval(self, path: Path, split: str | None, overrides: list[str]) -> dict[str, Any]:
        self.calls.append(("eval", (path, split, overrides)))
        if self.raise_exc is not None:
            raise self.raise_exc
        return self.metrics


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RecordingRunner:
    rec = RecordingRunner(tmp_path)
    module = types.ModuleType("moc_cli.training")
    module.run_training = rec.run_training  # type: ignore[attr-defined]
    module.run_eval = rec.run_eval  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "moc_cli.training", module)
    return rec
