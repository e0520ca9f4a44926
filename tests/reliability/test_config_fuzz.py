"""Property test over the run-config schema: any override validates or fails cleanly (exit 2, no traceback)."""

from __future__ import annotations

import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from moc_cli.cli.app import app
from moc_cli.config import METHOD_MODELS, ConfigError, RunConfig, load_run_config

RECIPE = "demo/sentiment"


def _literal_values(annotation: typing.Any) -> list[typing.Any]:
    """Allowed values of Literal[...] fields (also inside Optional), to hit the valid space too."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literal_values(arg)]


def _schema_keys() -> dict[str, list[typing.Any]]:
    keys: dict[str, list[typing.Any]] = {}
    models = {"": RunConfig}
    for section, info in RunConfig.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            models[section] = info.annotation
    for method_model in METHOD_MODELS.values():
        for name, info in method_model.model_fields.items():
            keys.setdefault(f"method.{name}", []).extend(_literal_values(info.annotation))
    for prefix, model in models.items():
        for name, info in model.model_fields.items():
            if prefix == "" and name in models:
                continue
            keys[f"{prefix}.{name}" if prefix else name] = _literal_values(info.annotation)
    return keys


SCHEMA_KEYS = _schema_keys()
ODD_VALUES = [
    "",
    "null",
    "~",
    "true",
    "false",
    "no",
    "yes",
    "[]",
    "{}",
    "[1, 2]",
    "{a: 1}",
    "'quoted'",
    '"x"',
    "[",
    "{",
    ": :",
    "- a",
    ".nan",
    ".inf",
    "-.inf",
    "nan",
    "1e400",
    "-0",
    "0x1F",
    "1_000",
    "3e-4",
    "!!python/object/apply:os.system ['true']",
    "&a [*a]",
    "!!binary aGVsbG8=",
    "2024-01-01",
    "é\u0000",
]


@st.composite
def override_items(draw: st.DrawFn) -> str:
    key = draw(
        st.one_of(
            st.sampled_from(sorted(SCHEMA_KEYS)),
            st.sampled_from(sorted(SCHEMA_KEYS)).map(lambda k: k + draw(st.sampled_from(["x", ".sub", "_"]))),
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz._~", min_size=0, max_size=12),
        )
    )
    choices = SCHEMA_KEYS.get(key, [])
    value = draw(
        st.one_of(
            st.integers(-(10**12), 10**12).map(str),
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            st.sampled_from(ODD_VALUES),
            st.text(max_size=16),
            st.sampled_from(choices or ["x"]).map(str),
        )
    )
    form = draw(st.sampled_from(["set", "set", "set", "delete", "bare"]))
    if form == "delete":
        return f"~{key}"
    if form == "bare":
        return key
    return f"{key}={value}"


def _library_outcome(overrides: list[str]) -> ConfigError | None:
    try:
        load_run_config(recipe=RECIPE, config_file=None, overrides=overrides)
    except ConfigError as err:
        return err
    return None  # any other exception type fails the test with its traceback


runner = CliRunner()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(override_items(), min_size=1, max_size=4))
def test_dry_run_validates_or_exits_2(overrides: list[str]) -> None:
    expected = _library_outcome(overrides)
    result = runner.invoke(app, ["train", "--recipe", RECIPE, "--dry-run", "--", *overrides])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if expected is None:
        assert result.exit_code == 0, result.output
        assert "resolved config" in result.output
    else:
        assert result.exit_code == 2, result.output
        assert expected.format() in result.output


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(override_items(), min_size=1, max_size=3))
def test_validate_never_tracebacks(overrides: list[str]) -> None:
    result = runner.invoke(app, ["validate", RECIPE, "--", *overrides])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output


def test_schema_keys_cover_every_section() -> None:
    sections = {key.split(".")[0] for key in SCHEMA_KEYS}
    assert {"model", "task", "data", "method", "training", "output", "seed"} <= sections
    assert "moc" in SCHEMA_KEYS["method.name"] and "lora" in SCHEMA_KEYS["method.name"]


@pytest.mark.parametrize(
    "override",
    [
        "training.learning_rate=-1",
        "training.max_steps=1.5",
        "method.r=0",
        "model.dtype=fp8",
        "training.eval_strategy=sometimes",
    ],
)
def test_known_bad_values_exit_2_naming_the_key(override: str) -> None:
    result = runner.invoke(app, ["train", "--recipe", RECIPE, "--dry-run", override])
    assert result.exit_code == 2, result.output
    assert f"  - {override.split('=')[0]}:" in result.output
