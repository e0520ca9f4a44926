"""Each method option is declared once, as a field of its peft config dataclass; the schema derives from it."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from moc_cli.config import METHOD_MODELS, RunConfig, load_run_config
from moc_cli.config.errors import ConfigError
from moc_cli.config.resources import defaults_file
from moc_cli.methods import METHOD_NAMES, METHODS
from moc_cli.tuner import MocConfig

PACKAGE = Path(__file__).resolve().parents[2] / "moc_cli"
MOC_OWN_FIELDS = [f.name for f in METHODS["moc"].option_fields()]


def _class_level_names(tree: ast.Module) -> dict[str, set[str]]:
    """Class name -> names it declares at class level (`x: T = ...` or `x = ...`)."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            names = out.setdefault(node.name, set())
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    names.add(stmt.target.id)
                elif isinstance(stmt, ast.Assign):
                    names.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
    return out


def test_every_moc_field_is_declared_in_one_python_class() -> None:
    declared_in: dict[str, list[str]] = {name: [] for name in MOC_OWN_FIELDS}
    for path in sorted(PACKAGE.rglob("*.py")):
        for cls, names in _class_level_names(ast.parse(path.read_text(encoding="utf-8"))).items():
            for name in names & set(MOC_OWN_FIELDS):
                declared_in[name].append(f"{path.relative_to(PACKAGE.parent)}::{cls}")
    # MolexConfig declares its own alpha, top_k, ... (another method's options, not copies of MoC's).
    copies = {
        name: [where for where in places if not where.endswith(("::MocConfig", "::MolexConfig"))]
        for name, places in declared_in.items()
    }
    assert {name: places for name, places in copies.items() if places} == {}
    assert all(any(w == "moc_cli/tuner/config.py::MocConfig" for w in declared_in[n]) for n in MOC_OWN_FIELDS)


def test_defaults_yaml_names_the_method_and_repeats_none_of_its_fields() -> None:
    data = yaml.safe_load(defaults_file().read_text(encoding="utf-8"))
    assert data["method"] == {"name": "moc"}


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if METHODS[n].config_class])
def test_schema_fields_take_type_default_and_help_from_the_dataclass(name: str) -> None:
    method = METHODS[name]
    config_cls = method.load_config_class()
    hints = typing.get_type_hints(config_cls)
    model = METHOD_MODELS[name]
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    assert list(model.model_fields) == ["name", *(f.name for f in method.option_fields())]
    for key, info in model.model_fields.items():
        if key == "name":
            continue
        assert info.annotation == hints[key], key
        expected = method.implied.get(key, method.defaults.get(key, fields[key].default))
        assert info.get_default(call_default_factory=True) == expected, key
        assert fields[key].metadata["help"] in (info.description or ""), key


def test_the_section_builds_the_peft_config_the_runner_will_build() -> None:
    cfg = RunConfig.model_validate(
        {"model": {"name_or_path": "m"}, "task": {"name": "glue/sst2"}, "method": {"name": "control", "r": 4}}
    )
    built = MocConfig(**{**cfg.method.model_dump(exclude={"name"}), **METHODS["control"].implied})
    assert (built.r, built.global_control, built.variant) == (4, False, "both-shared")


def _load_error(tmp_path: Path, *overrides: str) -> str:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name_or_path: m}\ntask: {name: glue/sst2}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_run_config(None, str(recipe), list(overrides))
    return caught.value.format()


def test_a_value_the_dataclass_refuses_is_reported_at_its_key_with_the_dataclass_message(
    tmp_path: Path,
) -> None:
    text = _load_error(tmp_path, "method.r=0")
    assert "method.r" in text
    assert "MocConfig.r=0 is invalid; allowed: an integer >= 1." in text


def test_a_choice_comes_from_the_literal_annotation(tmp_path: Path) -> None:
    text = _load_error(tmp_path, "method.variant=both")
    assert "method.variant" in text
    assert "expected one of: ffn, attn, both-separate, both-shared, block" in text


def test_a_value_implied_by_the_method_name_cannot_be_changed(tmp_path: Path) -> None:
    text = _load_error(tmp_path, "method.name=control", "method.global_control=true")
    assert "method.global_control" in text
    assert "method.name=control always has global_control=False" in text


def test_bounds_peft_does_not_check_are_still_enforced(tmp_path: Path) -> None:
    assert "method.r" in _load_error(tmp_path, "method.name=lora", "method.r=0")
