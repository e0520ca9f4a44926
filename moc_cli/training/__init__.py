"""The training runner: model building, methods -> peft configs, Trainer runs, eval, resume, plots.

Heavy modules load on first use, so `import moc_cli.training` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moc_cli._lazy import lazy_exports

if TYPE_CHECKING:
    from moc_cli.models import build_model_and_tokenizer
    from moc_cli.training.errors import RunInterrupted, RunSetupError
    from moc_cli.training.evaluation import run_eval
    from moc_cli.training.methods import apply_method
    from moc_cli.training.runner import run_training

_EXPORTS = {
    "run_training": "moc_cli.training.runner",
    "run_eval": "moc_cli.training.evaluation",
    "apply_method": "moc_cli.training.methods",
    "build_model_and_tokenizer": "moc_cli.models",
    "RunSetupError": "moc_cli.training.errors",
    "RunInterrupted": "moc_cli.training.errors",
}

__all__ = [  # noqa: F822 (resolved lazily by __getattr__)
    "RunInterrupted",
    "RunSetupError",
    "apply_method",
    "build_model_and_tokenizer",
    "run_eval",
    "run_training",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
