"""The hard-coded allowed values match the installed transformers (they exist to keep the CLI light)."""

from __future__ import annotations

import inspect

from moc_cli.config import choices
from moc_cli.config.schema import TrainingSection


def test_scheduler_types_match_transformers() -> None:
    from transformers.trainer_utils import SchedulerType

    assert set(choices.LR_SCHEDULER_TYPES) == {s.value for s in SchedulerType}


def test_strategies_match_transformers() -> None:
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy

    assert set(choices.EVAL_STRATEGIES) == {s.value for s in IntervalStrategy}
    assert set(choices.SAVE_STRATEGIES) == {s.value for s in SaveStrategy}


def test_optimizers_match_transformers() -> None:
    from transformers.training_args import OptimizerNames

    assert set(choices.OPTIMIZERS) == {o.value for o in OptimizerNames}


def test_report_to_matches_transformers_integrations() -> None:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(choices.REPORT_TO) == set(INTEGRATION_TO_CALLBACK) | {"all", "none"}


def test_training_fields_are_training_arguments_names() -> None:
    from transformers import TrainingArguments

    params = set(inspect.signature(TrainingArguments).parameters)
    ours = set(TrainingSection.model_fields) - {
        "early_stopping_patience"
    }  # an EarlyStoppingCallback argument
    assert ours - params == set()


def test_defaults_yaml_matches_schema_defaults() -> None:
    """configs/defaults.yaml documents the schema defaults: the two must not drift apart."""
    import yaml

    from moc_cli.config import METHOD_MODELS
    from moc_cli.config.resources import defaults_file
    from moc_cli.config.schema import DataSection, ModelSection, OutputSection, TaskSection

    data = yaml.safe_load(defaults_file().read_text(encoding="utf-8"))
    sections = {
        "model": ModelSection,
        "task": TaskSection,
        "data": DataSection,
        "training": TrainingSection,
        "output": OutputSection,
        "method": METHOD_MODELS["moc"],
    }
    for name, model in sections.items():
        for key, value in data[name].items():
            field = model.model_fields[key]
            if key == "name":
                continue
            assert field.get_default(call_default_factory=True) == value, f"{name}.{key}"
    assert data["seed"] == 42
