"""Run configuration: typed schema, layering (defaults -> recipe -> file -> overrides), provenance.

Imports nothing heavy (pydantic and pyyaml only) so configs are checked before any model loads.
"""

from moc_cli.config.errors import ConfigError, ConfigIssue
from moc_cli.config.loader import load_run_config
from moc_cli.config.render import dump_config, render_config
from moc_cli.config.resources import find_recipe, list_recipes, recipe_description, resource_dir
from moc_cli.config.schema import (
    METHOD_MODELS,
    ControlMethod,
    DataSection,
    DoraMethod,
    FullMethod,
    Ia3Method,
    LoraMethod,
    MocMethod,
    ModelSection,
    MolexMethod,
    OutputSection,
    RunConfig,
    TaskSection,
    TrainingSection,
)

__all__ = [
    "METHOD_MODELS",
    "ConfigError",
    "ConfigIssue",
    "ControlMethod",
    "DataSection",
    "DoraMethod",
    "FullMethod",
    "Ia3Method",
    "LoraMethod",
    "MocMethod",
    "ModelSection",
    "MolexMethod",
    "OutputSection",
    "RunConfig",
    "TaskSection",
    "TrainingSection",
    "dump_config",
    "find_recipe",
    "list_recipes",
    "load_run_config",
    "recipe_description",
    "render_config",
    "resource_dir",
]
