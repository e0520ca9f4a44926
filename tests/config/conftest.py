"""Fixtures for config tests: a private recipe tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moc_cli.testing import TINY_RECIPE, packaged_recipes_at, write_recipe_tree


@pytest.fixture
def recipes_root(tmp_path: Path, hub_cache: Path) -> Iterator[Path]:
    """Point packaged-recipe lookup at a temporary tree holding `glue/sst2` and `glue/cola`
    (their Hub model is found in the `hub_cache`, as pre-flight requires)."""
    recipes = {
        "glue/sst2": TINY_RECIPE,
        "glue/cola": {**TINY_RECIPE, "description": "CoLA.", "task": {"name": "glue/cola"}},
        "demo/sentiment": {**TINY_RECIPE, "description": "Demo."},
    }
    with packaged_recipes_at(write_recipe_tree(tmp_path / "recipes", recipes)) as root:
        yield root
