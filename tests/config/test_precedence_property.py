"""Property: for any subset of layers setting a key, the highest layer wins and provenance names it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from moc_cli.config import load_run_config
from moc_cli.testing import TINY_RECIPE, write_yaml

KEYS = {
    "training.max_steps": st.integers(min_value=1, max_value=10_000),
    "method.r": st.integers(min_value=1, max_value=64),
    "training.learning_rate": st.floats(min_value=1e-6, max_value=1.0, allow_nan=False),
    "output.progress": st.sampled_from(["auto", "bar", "plain", "none"]),
}
DEFAULTS = {
    "training.max_steps": -1,
    "method.r": 16,
    "training.learning_rate": 3e-4,
    "output.progress": "auto",
}


def _nested(path: str, value: object) -> dict:
    head, _, leaf = path.partition(".")
    return {head: {leaf: value}}


layer_values = st.fixed_dictionaries({key: st.none() | strat for key, strat in KEYS.items()})


@settings(max_examples=40, deadline=None)
@given(recipe=layer_values, file=layer_values, override=layer_values)
def test_highest_layer_wins(recipe: dict, file: dict, override: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = {k: v for k, v in TINY_RECIPE.items() if k not in ("training", "method")}
        base["method"] = {"name": "moc"}
        for key, value in recipe.items():
            if value is not None:
                section, leaf = key.split(".")
                base.setdefault(section, {})[leaf] = value
        user: dict = {}
        for key, value in file.items():
            if value is not None:
                section, leaf = key.split(".")
                user.setdefault(section, {})[leaf] = value
        recipe_path = write_yaml(Path(tmp) / "recipe.yaml", base)
        file_path = write_yaml(Path(tmp) / "user.yaml", user)
        items = [
            f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
            for key, value in override.items()
            if value is not None
        ]
        cfg, prov = load_run_config(str(recipe_path), str(file_path), items)
        dumped = cfg.model_dump()
        for key in KEYS:
            section, leaf = key.split(".")
            for layer, source in (
                (override, "override"),
                (file, f"file:{file_path}"),
                (recipe, f"recipe:{recipe_path}"),
            ):
                if layer[key] is not None:
                    expected, expected_source = layer[key], source
                    break
            else:
                expected, expected_source = DEFAULTS[key], "default"
            assert dumped[section][leaf] == expected, key
            assert prov[key] == expected_source, key
