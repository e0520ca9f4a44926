"""Fixtures for config tests: a private recipe tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_helpers import TINY_RECIPE, write_yaml

import moc_cli.config.resources as resources

REAL_RESOURCE_DIR = resources.resource_dir


@pytest.fixture
def recipes_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point packaged-recipe lookup at a temporary tree holding `glue/sst2` and `glue/cola`."""
    root = tmp_path / "recipes"
    write_yaml(root / "glue" / "sst2.yaml", TINY_RECIPE)
    write_yaml(
        root / "glue" / "cola.yaml", {**TINY_RECIPE, "description": "CoLA.", "task": {"name": "glue/cola"}}
    )
    write_yaml(root / "demo" / "sentiment.yaml", {**TINY_RECIPE, "description": "Demo."})

    def fake_resource_dir(kind: str) -> Path:
        return root if kind == "recipes" else REAL_RESOURCE_DIR(kind)

    monkeypatch.setattr(resources, "resource_dir", fake_resource_dir)
    return root
