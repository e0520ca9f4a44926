"""The hard-coded allowed values match the installed transformers (they exist to keep config import light)."""

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


def test_moc_choices_and_fields_match_the_tuner() -> None:
    import dataclasses

    from moc_cli.config.schema import MocMethod
    from moc_cli.tuner import config as tuner_config

    assert choices.MOC_VARIANTS == tuner_config.VARIANTS
    assert choices.ROUTER_SCOPES == tuner_config.ROUTER_SCOPES
    assert choices.INIT_A == tuner_config.INIT_A
    assert choices.EXPERT_COMPUTE == tuner_config.EXPERT_COMPUTE
    tuner_fields = {f.name: f for f in dataclasses.fields(tuner_config.MocConfig)}
    for name, field in MocMethod.model_fields.items():
        if name == "name":
            continue
        assert name in tuner_fields, f"method.{name} is not a MocConfig field"
        default = field.get_default(call_default_factory=True)
        assert default == tuner_fields[name].default, f"method.{name}: {default!r} != MocConfig default"


def test_method_fields_are_peft_config_fields() -> None:
    """The runner passes method.* straight to the peft config: every key must exist there."""
    import dataclasses

    from peft import IA3Config, LoraConfig

    from moc_cli.baselines.molex.config import ROUTING_CHOICES, MolexConfig
    from moc_cli.config import METHOD_MODELS
    from moc_cli.tuner.config import MocConfig

    targets = {
        "moc": MocConfig,
        "control": MocConfig,
        "lora": LoraConfig,
        "dora": LoraConfig,
        "ia3": IA3Config,
        "molex": MolexConfig,
    }
    for name, model in METHOD_MODELS.items():
        fields = set(model.model_fields) - {"name"}
        if name == "full":
            assert fields == set()
            continue
        accepted = {f.name for f in dataclasses.fields(targets[name])}
        assert fields - accepted == set(), name
    assert choices.MOLEX_ROUTING == ROUTING_CHOICES
    molex_defaults = {f.name: f.default for f in dataclasses.fields(MolexConfig)}
    for key, field in METHOD_MODELS["molex"].model_fields.items():
        if key != "name":
            assert field.get_default(call_default_factory=True) == molex_defaults[key], key


def test_moc_layer_lists_match_the_architecture_map() -> None:
    # Pre-flight names MoC's valid target_modules from this copy without importing torch.
    from moc_cli.tuner.architectures import ARCHITECTURES

    assert choices.MOC_LAYER_LISTS == {name: spec["layers"] for name, spec in ARCHITECTURES.items()}
