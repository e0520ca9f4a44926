"""Recipe/config lookup: the wheel's `_resources` copy wins; a checkout uses the top-level folders."""

from __future__ import annotations

from pathlib import Path

import pytest

import moc_cli.config.resources as resources
from moc_cli.config import ConfigError, find_recipe, list_recipes, load_run_config, recipe_description
from moc_cli.testing import TINY_RECIPE, write_yaml


def _fake_install(root: Path, wheel: bool) -> Path:
    package = root / "site" / "moc_cli"
    package.mkdir(parents=True)
    if wheel:
        write_yaml(
            package / "_resources" / "recipes" / "glue" / "rte.yaml", {**TINY_RECIPE, "description": "RTE."}
        )
        write_yaml(package / "_resources" / "configs" / "defaults.yaml", {"seed": 7})
    return package


def test_wheel_resources_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = _fake_install(tmp_path, wheel=True)
    monkeypatch.setattr(resources, "_PACKAGE_DIR", package)
    assert resources.resource_dir("recipes") == package / "_resources" / "recipes"
    assert list_recipes() == ["glue/rte"]
    cfg, prov = load_run_config("glue/rte", None, [])
    assert cfg.seed == 7 and prov["seed"] == "default"
    assert recipe_description(find_recipe("glue/rte")) == "RTE."


def test_checkout_falls_back_to_top_level_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = _fake_install(tmp_path, wheel=False)
    monkeypatch.setattr(resources, "_PACKAGE_DIR", package)
    assert resources.resource_dir("recipes") == package.parent / "recipes"
    assert resources.defaults_file() == package.parent / "configs" / "defaults.yaml"
    assert list_recipes() == []
    with pytest.raises(ConfigError) as exc:
        find_recipe("glue/rte")
    assert (
        str(exc.value.issues[0])
        == f"--recipe: unknown recipe 'glue/rte'; no recipes found under {package.parent / 'recipes'}"
    )


def test_yml_suffix_and_description_first_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = _fake_install(tmp_path, wheel=False)
    monkeypatch.setattr(resources, "_PACKAGE_DIR", package)
    write_yaml(package.parent / "recipes" / "x" / "y.yml", {"description": "first line\nsecond"})
    assert list_recipes() == ["x/y"]
    assert recipe_description(find_recipe("x/y")) == "first line"


def test_packaged_name_with_suffix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = _fake_install(tmp_path, wheel=True)
    monkeypatch.setattr(resources, "_PACKAGE_DIR", package)
    monkeypatch.chdir(tmp_path)
    assert find_recipe("glue/rte.yaml") == package / "_resources" / "recipes" / "glue" / "rte.yaml"
    with pytest.raises(ConfigError) as exc:
        find_recipe("./glue/rte.yaml")
    assert str(exc.value.issues[0]) == "--recipe: recipe file not found: ./glue/rte.yaml"
