"""Layering, provenance and every error path of `load_run_config`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moc_cli.config import ConfigError, RunConfig, find_recipe, list_recipes, load_run_config, render_config
from moc_cli.config.resources import defaults_file
from moc_cli.testing import TINY_RECIPE, write_yaml


def _messages(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(issue) for issue in exc.value.issues]


# --- layering precedence: one test per layer -------------------------------------------------


def test_defaults_layer_fills_unset_keys(recipes_root: Path) -> None:
    cfg, prov = load_run_config("glue/sst2", None, [])
    defaults = yaml.safe_load(defaults_file().read_text())
    assert cfg.training.weight_decay == defaults["training"]["weight_decay"] == 0.0
    assert cfg.seed == 42
    assert prov["training.weight_decay"] == "default"
    assert prov["seed"] == "default"
    # keys that no YAML mentions are schema defaults, still labelled `default`
    assert cfg.method.name == "moc" and cfg.method.control_scale == 1.0
    assert prov["method.control_scale"] == "default"


def test_recipe_layer_beats_defaults(recipes_root: Path) -> None:
    cfg, prov = load_run_config("glue/sst2", None, [])
    recipe_path = recipes_root / "glue" / "sst2.yaml"
    assert cfg.training.learning_rate == 1.0e-3  # defaults.yaml says 3.0e-4
    assert prov["training.learning_rate"] == f"recipe:{recipe_path}"
    assert cfg.method.r == 8
    assert prov["method.r"] == f"recipe:{recipe_path}"
    assert cfg.recipe == "glue/sst2"


def test_file_layer_beats_recipe(recipes_root: Path, tmp_path: Path) -> None:
    user = write_yaml(tmp_path / "mine.yaml", {"training": {"learning_rate": 5.0e-4}, "method": {"r": 4}})
    cfg, prov = load_run_config("glue/sst2", str(user), [])
    assert cfg.training.learning_rate == 5.0e-4
    assert cfg.method.r == 4
    assert prov["training.learning_rate"] == f"file:{user}"
    assert prov["training.max_steps"] == f"recipe:{recipes_root / 'glue' / 'sst2.yaml'}"


def test_override_beats_file(recipes_root: Path, tmp_path: Path) -> None:
    user = write_yaml(tmp_path / "mine.yaml", {"training": {"learning_rate": 5.0e-4}})
    cfg, prov = load_run_config(
        "glue/sst2", str(user), ["training.learning_rate=3e-5", "training.report_to=[tensorboard]"]
    )
    assert cfg.training.learning_rate == 3e-5
    assert cfg.training.report_to == ["tensorboard"]
    assert prov["training.learning_rate"] == "override"
    assert prov["training.report_to"] == "override"


def test_delete_override_resets_to_schema_default(recipes_root: Path) -> None:
    cfg, prov = load_run_config("glue/sst2", None, ["~training.max_steps", "~method.r"])
    assert cfg.training.max_steps == -1
    assert cfg.method.r == 16
    assert prov["training.max_steps"] == "default"
    assert prov["method.r"] == "default"


def test_recipe_path_instead_of_name(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "r.yaml", TINY_RECIPE)
    cfg, prov = load_run_config(str(path), None, [])
    assert cfg.task.name == "glue/sst2"
    assert prov["task.name"] == f"recipe:{path}"


def test_config_file_alone_without_recipe(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "full.yaml", TINY_RECIPE)
    cfg, prov = load_run_config(None, str(path), [])
    assert cfg.recipe is None
    assert prov["model.name_or_path"] == f"file:{path}"


def test_switching_method_drops_previous_method_fields(recipes_root: Path, tmp_path: Path) -> None:
    # the recipe says moc with r=8; LoRA has no `variant`, so the moc section must not leak into it
    cfg, prov = load_run_config("glue/sst2", None, ["method.lora_dropout=0.1", "method.name=lora"])
    assert cfg.method.name == "lora"
    assert cfg.method.r == 8  # LoRA's own default, not the recipe's moc r
    assert cfg.method.lora_dropout == 0.1
    assert prov["method.r"] == "default"
    assert prov["method.name"] == "override"
    user = write_yaml(tmp_path / "dora.yaml", {"method": {"name": "dora", "r": 2}})
    cfg, prov = load_run_config("glue/sst2", str(user), [])
    assert cfg.method.model_dump() == {
        "name": "dora",
        "r": 2,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": None,
        "modules_to_save": None,
    }
    assert prov["method.r"] == f"file:{user}"


def test_override_values_are_yaml_typed(recipes_root: Path) -> None:
    cfg, _ = load_run_config(
        "glue/sst2",
        None,
        [
            "training.warmup_steps=10",
            "training.bf16=true",
            "method.target_modules=[query, value]",
            "task.options={packing: false}",
            "training.learning_rate=2e-4",
            "data.files.train=/tmp/train.jsonl",
            "output.dir=~",
        ],
    )
    assert cfg.training.warmup_steps == 10 and isinstance(cfg.training.warmup_steps, int)
    assert cfg.training.bf16 is True
    assert cfg.method.target_modules == ["query", "value"]
    assert cfg.task.options == {"packing": False}
    assert cfg.training.learning_rate == 2e-4
    assert cfg.data.files == {"train": "/tmp/train.jsonl"}
    assert cfg.output.dir is None  # `~` is YAML null


def test_every_leaf_has_provenance(recipes_root: Path) -> None:
    cfg, prov = load_run_config("glue/sst2", None, ["data.files.train=a.jsonl"])
    assert prov["data.files.train"] == "override"
    assert set(prov.values()) <= {"default", "override", f"recipe:{recipes_root / 'glue' / 'sst2.yaml'}"}
    assert "training.report_to" in prov and "task.options" in prov


def test_render_round_trips_and_comments_every_value(recipes_root: Path) -> None:
    cfg, prov = load_run_config("glue/sst2", None, ["method.r=4", "training.report_to=[tensorboard]"])
    text = render_config(cfg, prov)
    assert yaml.safe_load(text) == cfg.model_dump(mode="json")
    assert RunConfig.model_validate(yaml.safe_load(text)) == cfg
    lines = text.splitlines()
    assert any(line.startswith("  r: 4") and line.endswith("# from override") for line in lines)
    assert any(line.startswith("  report_to: [tensorboard]") for line in lines)
    for line in lines:
        if not line.rstrip().endswith(":"):  # every value line (not a section header) names its source
            assert "# from " in line, line


# --- recipes -------------------------------------------------------------------------------


def test_list_and_find_recipes(recipes_root: Path) -> None:
    assert list_recipes() == ["demo/sentiment", "glue/cola", "glue/sst2"]
    assert find_recipe("glue/cola") == recipes_root / "glue" / "cola.yaml"


def test_missing_recipe_suggests_close_name(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst", None, [])
    assert _messages(exc) == [
        "--recipe: unknown recipe 'glue/sst'; run `moc ls` to list recipes; did you mean 'glue/sst2'?"
    ]


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config(str(tmp_path / "nope.yaml"), None, [])
    assert _messages(exc) == [f"--recipe: recipe file not found: {tmp_path / 'nope.yaml'}"]


# --- error paths -----------------------------------------------------------------------------


def test_unknown_key_at_depth_two_suggests(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", None, ["training.learning_rat=1e-4"])
    assert _messages(exc) == [
        "training.learning_rat: unknown key; did you mean 'learning_rate'? [from override]"
    ]


def test_unknown_key_in_file_names_the_file(recipes_root: Path, tmp_path: Path) -> None:
    user = write_yaml(tmp_path / "mine.yaml", {"model": {"dtpye": "bfloat16"}})
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", str(user), [])
    assert _messages(exc) == [f"model.dtpye: unknown key; did you mean 'dtype'? [from file:{user}]"]


def test_unknown_method_key_names_the_method(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", None, ["method.name=lora", "method.lora_dropuot=0.1"])
    assert _messages(exc) == [
        "method.lora_dropuot: unknown key for method 'lora'; did you mean 'lora_dropout'? [from override]"
    ]


def test_wrong_type(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", None, ["training.max_steps=abc"])
    assert _messages(exc) == [
        "training.max_steps: Input should be a valid integer, unable to parse string as an integer "
        "(got 'abc') [from override]"
    ]


def test_bad_enum_value_suggests(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", None, ["method.variant=both_shared"])
    assert _messages(exc) == [
        "method.variant: 'both_shared' is not allowed; expected one of: ffn, attn, both-separate, both-shared, block; "
        "did you mean 'both-shared'? [from override]"
    ]


def test_bad_method_name_suggests(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", None, ["method.name=dorra"])
    assert _messages(exc) == [
        "method.name: unknown method 'dorra'; expected one of: moc, control, lora, dora, ia3, full, molex; "
        "did you mean 'dora'? [from override]"
    ]


def test_bad_list_item_names_its_index(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", None, ["training.report_to=[none, tensorbord]"])
    (message,) = _messages(exc)
    assert message.startswith(
        "training.report_to[1]: 'tensorbord' is not allowed; expected one of: none, all,"
    )
    assert message.endswith("did you mean 'tensorboard'? [from override]")


def test_several_errors_at_once(recipes_root: Path, tmp_path: Path) -> None:
    user = write_yaml(tmp_path / "mine.yaml", {"training": {"lr_scheduler_type": "cosin"}})
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", str(user), ["foo", "trainig.max_steps=3", "model.dtype=fp16", "seed=-1"])
    text = exc.value.format()
    assert text.startswith("invalid config (5 errors):\n")
    assert "  - foo: override must look like key.path=value (or ~key.path to reset a key)" in text
    assert "  - trainig: unknown key; did you mean 'training'? [from override]" in text
    assert (
        "  - model.dtype: 'fp16' is not allowed; expected one of: float32, bfloat16, float16, auto; " in text
    )
    assert f"did you mean 'cosine'? [from file:{user}]" in text
    assert "  - seed: Input should be greater than or equal to 0 (got -1) [from override]" in text


def test_malformed_override(recipes_root: Path) -> None:
    for item, fragment in [
        ("foo", "foo: override must look like key.path=value (or ~key.path to reset a key)"),
        ("=3", "=3: empty key in override; expected key.path=value"),
        ("a..b=1", "a..b=1: empty key in override; expected key.path=value"),
        ("~a=1", "~a=1: a deletion takes no value: write `~key.path`"),
    ]:
        with pytest.raises(ConfigError) as exc:
            load_run_config("glue/sst2", None, [item])
        assert _messages(exc) == [fragment]


def test_delete_unknown_key_suggests(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", None, ["~training.max_step"])
    assert _messages(exc) == [
        "training.max_step: unknown key in `~training.max_step`; did you mean 'max_steps'? [from override]"
    ]


def test_override_below_a_scalar(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", None, ["seed.value=3"])
    assert _messages(exc) == ["seed.value: cannot set a key below seed, which holds 42 [from override]"]


def test_missing_config_file(recipes_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", str(tmp_path / "absent.yaml"), [])
    assert _messages(exc) == [f"--config: file not found: {tmp_path / 'absent.yaml'}"]


def test_invalid_yaml_names_line(recipes_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rate: [1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", str(bad), [])
    (message,) = _messages(exc)
    assert message.startswith(f"--config: invalid YAML in {bad} (line 3, column 1)")


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_run_config(None, str(bad), ["model.name_or_path=x", "task.name=glue/sst2"])
    assert _messages(exc) == [f"--config: {bad} must hold a mapping of keys, not a list"]


def test_required_keys_missing_without_recipe() -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config(None, None, [])
    assert _messages(exc) == [
        "model.name_or_path: required key is missing; set it in a recipe, --config file or `model.name_or_path=...`",
        "task.name: required key is missing; set it in a recipe, --config file or `task.name=...`",
    ]


def test_cross_field_checks(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config(
            "glue/sst2",
            None,
            [
                "training.bf16=true",
                "training.fp16=true",
                "training.early_stopping_patience=2",
                "method.name=control",
                "method.global_control=true",
            ],
        )
    assert _messages(exc) == [
        "method.global_control: method.name=control always has global_control=False; choose another "
        "method.name to change it [from override]",
        "training: bf16 and fp16 are both true; pick one; early_stopping_patience needs load_best_model_at_end=true "
        "[from override]",
    ]


def test_load_best_needs_matching_strategies(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config(
            "glue/sst2", None, ["training.load_best_model_at_end=true", "training.save_strategy=steps"]
        )
    assert "needs save_strategy (steps) to equal eval_strategy (epoch)" in _messages(exc)[0]
    cfg, _ = load_run_config(
        "glue/sst2", None, ["training.load_best_model_at_end=true", "training.early_stopping_patience=3"]
    )
    assert cfg.training.early_stopping_patience == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.06", 0.06), ("100", 100), ("2.0", 2), ("0", 0)],
)
def test_warmup_steps_count_or_ratio(recipes_root: Path, value: str, expected: float) -> None:
    cfg, _ = load_run_config("glue/sst2", None, [f"training.warmup_steps={value}"])
    assert cfg.training.warmup_steps == expected
    assert type(cfg.training.warmup_steps) is type(expected)


def test_warmup_steps_fractional_count_rejected(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", None, ["training.warmup_steps=1.5"])
    assert _messages(exc) == [
        "training.warmup_steps: warmup_steps=1.5: a float must be a ratio in [0, 1); use an integer count "
        "[from override]"
    ]


def test_report_to_accepts_a_single_string(recipes_root: Path) -> None:
    cfg, _ = load_run_config("glue/sst2", None, ["training.report_to=tensorboard"])
    assert cfg.training.report_to == ["tensorboard"]


def test_section_given_a_scalar_points_to_its_keys(recipes_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_run_config("glue/sst2", None, ["method=lora", "training=5"])
    assert _messages(exc) == [
        "method: expected a mapping of keys, got 'lora'; set keys below it, e.g. `method.name=lora` [from override]",
        "training: expected a mapping of keys, got 5; set keys below it, e.g. `training.<key>=...` [from override]",
    ]


def test_numbers_given_to_string_keys_stay_usable(recipes_root: Path) -> None:
    cfg, _ = load_run_config("glue/sst2", None, ["data.name=1", "output.dir=2024"])
    assert cfg.data.name == "1" and cfg.output.dir == "2024"


def test_render_round_trips_awkward_strings(recipes_root: Path) -> None:
    cfg, prov = load_run_config("glue/sst2", None, ["task.options={a: [1, {b: 2}], c: 'x: y # z'}"])
    cfg = cfg.model_copy(update={"description": "two\nlines: with # hash\n  and indent"})
    text = render_config(cfg, prov)
    assert yaml.safe_load(text) == cfg.model_dump(mode="json")
    assert len([line for line in text.splitlines() if line.startswith("description:")]) == 1


def test_yaml_no_means_the_strategy_no():
    """`training.eval_strategy=no` is YAML's False; it must still select the strategy "no"."""
    cfg, prov = load_run_config(
        None,
        None,
        [
            "task.name=glue/sst2",
            "model.name_or_path=x",
            "training.eval_strategy=no",
            "training.save_strategy=no",
        ],
    )
    assert cfg.training.eval_strategy == "no"
    assert cfg.training.save_strategy == "no"
    assert prov["training.eval_strategy"] == "override"
