"""Run configuration: typed schema, layering (defaults -> recipe -> file -> overrides), provenance.

`import moc_cli.config` is cheap (pydantic and pyyaml): listing recipes needs nothing else. The
schema's `method` section is built from the methods' peft config dataclasses, so the names below
that validate or describe a run config import peft on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moc_cli._lazy import lazy_exports
from moc_cli.config.errors import ConfigError, ConfigIssue, SetupError
from moc_cli.config.resources import find_recipe, list_recipes, recipe_description, resource_dir

if TYPE_CHECKING:
    from moc_cli.config.loader import load_run_config
    from moc_cli.config.method_fields import METHOD_MODELS
    from moc_cli.config.render import dump_config, render_config
    from moc_cli.config.schema import (
        DataSection,
        ModelSection,
        OutputSection,
        RunConfig,
        TaskSection,
        TrainingSection,
    )

_LAZY = {
    "load_run_config": "moc_cli.config.loader",
    "METHOD_MODELS": "moc_cli.config.method_fields",
    "dump_config": "moc_cli.config.render",
    "render_config": "moc_cli.config.render",
    **{
        name: "moc_cli.config.schema"
        for name in (
            "DataSection",
            "ModelSection",
            "OutputSection",
            "RunConfig",
            "TaskSection",
            "TrainingSection",
        )
    },
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [  # noqa: F822 (resolved lazily by __getattr__)
    "METHOD_MODELS",
    "ConfigError",
    "SetupError",
    "ConfigIssue",
    "DataSection",
    "ModelSection",
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
