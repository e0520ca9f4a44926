"""Every recipe of the task suites validates against the config schema and names a matching task."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moc_cli.tasks import DataSource, get_task, list_tasks

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SUITES = ("glue", "superglue", "instruct", "commonsense")


def recipe_files() -> list[Path]:
    return sorted(p for suite in SUITES for p in (RECIPES / suite).glob("*.yaml"))


def test_one_recipe_per_task():
    names = {f"{p.parent.name}/{p.stem}" for p in recipe_files()}
    assert names == {t for t in list_tasks() if t.split("/")[0] in SUITES}


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_is_self_documenting_and_consistent(path: Path):
    text = path.read_text()
    name = f"{path.parent.name}/{path.stem}"
    assert text.startswith("# ") and f"#   moc train --recipe {name}\n" in text
    assert text.count(f"#   moc train --recipe {name} ") == 1  # an override example
    raw = yaml.safe_load(text)
    assert raw["task"]["name"] == name
    assert raw["description"] and "\n" not in raw["description"]
    task = get_task(name, raw["task"].get("options"))  # options are accepted by the task
    assert task.options.keys() == task.option_defaults.keys()
    if task.kind != "causal_lm":
        assert raw["method"] == {
            "name": "moc",
            "r": 16,
            "variant": "ffn",
            "top_k": 1,
            "alpha": 0.95,
            "aux_loss_coef": 0.01,
        }
        assert raw["model"]["name_or_path"] == "FacebookAI/roberta-base"
    else:
        assert raw["model"]["name_or_path"].startswith("meta-llama/")
        training = raw["training"]
        assert (training["num_train_epochs"], training["warmup_steps"], raw["task"]["max_length"]) == (
            3,
            100,
            256,
        )
        assert 1e-4 <= training["learning_rate"] <= 2e-4


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_validates_with_the_config_schema(path: Path):
    config = pytest.importorskip("moc_cli.config")
    cfg, provenance = config.load_run_config(recipe=str(path), config_file=None, overrides=[])
    assert cfg.task.name == f"{path.parent.name}/{path.stem}"
    assert provenance["task.name"].startswith("recipe:")


def test_glue_defaults_follow_the_control_paper():
    for path in (RECIPES / "glue").glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        t = raw["training"]
        assert raw["task"]["max_length"] == 128
        assert (
            t["per_device_train_batch_size"],
            t["weight_decay"],
            t["warmup_steps"],
            t["lr_scheduler_type"],
        ) == (64, 0.1, 0.06, "linear")
    cola = yaml.safe_load((RECIPES / "glue/cola.yaml").read_text())
    assert cola["training"]["learning_rate"] == 3.0e-4


def test_task_options_can_come_from_the_data_source(tmp_path: Path):
    (tmp_path / "train.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\n' * 10)
    task = get_task("instruct/alpaca")
    raw = task.load(DataSource(path=str(tmp_path), options={"validation_size": 3}))
    assert raw["validation"].num_rows == 3 and task.options["validation_size"] == 3
