"""Every recipe shipped under recipes/ validates: schema plus the cheap pre-flight checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from moc_cli.config import list_recipes, load_run_config, resource_dir
from moc_cli.config.preflight import preflight

EXAMPLE_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "examples").glob("*.yaml"))
RECIPES = list_recipes()
# Recipes whose training file has no Hub source and must be supplied by the user (LLM-Adapters'
# commonsense_170k.json): pre-flight rightly reports the file as missing until it is downloaded.
USER_SUPPLIED_DATA = {"commonsense/170k"}


def test_recipe_tree_is_the_repository_one() -> None:
    assert resource_dir("recipes") == Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("name", RECIPES or ["<none>"])
def test_shipped_recipe_validates(name: str, hub_cache: Path) -> None:
    # hub_cache: pre-flight needs the recipes' Hub models at hand (cached, as offline use requires)
    if name == "<none>":
        pytest.skip("no recipes shipped yet under recipes/")
    cfg, provenance = load_run_config(name, None, [])
    assert cfg.description.strip(), f"recipe {name} needs a one-line `description:` for `moc ls`"
    assert cfg.task.name, name
    issues = preflight(cfg, provenance)
    if name in USER_SUPPLIED_DATA:
        assert [i.path for i in issues] == ["data.path"], "\n".join(str(i) for i in issues)
        assert "no such file or directory" in issues[0].message
        return
    assert issues == [], "\n".join(str(i) for i in issues)


@pytest.mark.parametrize("name", RECIPES or ["<none>"])
@pytest.mark.parametrize("example", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_example_configs_layer_over_every_recipe(name: str, example: Path) -> None:
    if name == "<none>":
        pytest.skip("no recipes shipped yet under recipes/")
    cfg, provenance = load_run_config(name, str(example), [])
    assert any(source == f"file:{example}" for source in provenance.values())
