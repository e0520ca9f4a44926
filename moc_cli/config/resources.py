"""Locating packaged recipes and configs: inside the wheel, or in a source checkout.

A wheel carries them at `moc_cli/_resources/{recipes,configs}` (hatch force-include); an editable
install or a plain checkout uses the repository's top-level `recipes/` and `configs/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml

from moc_cli.config.errors import ConfigError, ConfigIssue, did_you_mean

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_YAML_SUFFIXES = (".yaml", ".yml")


def resource_dir(kind: Literal["recipes", "configs"]) -> Path:
    """The directory holding packaged `recipes` or `configs` (the wheel copy wins over the checkout)."""
    packaged = _PACKAGE_DIR / "_resources" / kind
    if packaged.is_dir():
        return packaged
    return _PACKAGE_DIR.parent / kind


def defaults_file() -> Path:
    return resource_dir("configs") / "defaults.yaml"


def list_recipes() -> list[str]:
    """Packaged recipe names (`<suite>/<task>`), sorted."""
    root = resource_dir("recipes")
    if not root.is_dir():
        return []
    names = {
        p.relative_to(root).with_suffix("").as_posix()
        for p in root.rglob("*")
        if p.suffix in _YAML_SUFFIXES and p.is_file()
    }
    return sorted(names)


def _looks_like_path(name: str) -> bool:
    return name.endswith(_YAML_SUFFIXES) or name.startswith((".", "/", "~"))


def find_recipe(name: str) -> Path:
    """A packaged recipe name (`glue/sst2`) or a path to a YAML file -> the file; ConfigError otherwise."""
    candidate = Path(name).expanduser()
    root = resource_dir("recipes")
    if _looks_like_path(name):
        if candidate.is_file():
            return candidate
        packaged = root / name  # `glue/sst2.yaml` meant as a packaged name
        if not name.startswith(("/", "~", ".")) and packaged.is_file():
            return packaged
        raise ConfigError(ConfigIssue("--recipe", f"recipe file not found: {name}"))
    for suffix in _YAML_SUFFIXES:
        path = root / f"{name}{suffix}"
        if path.is_file():
            return path
    if candidate.is_file():  # a YAML file without the usual suffix
        return candidate
    available = list_recipes()
    hint = "; run `moc ls` to list recipes" if available else f"; no recipes found under {root}"
    raise ConfigError(
        ConfigIssue("--recipe", f"unknown recipe '{name}'{hint}", suggestion=did_you_mean(name, available))
    )


def recipe_description(path: Path) -> str:
    """The recipe's `description:` value (one line), or '' when absent or unreadable."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return ""
    if isinstance(data, dict) and isinstance(data.get("description"), str):
        return data["description"].strip().splitlines()[0] if data["description"].strip() else ""
    return ""
