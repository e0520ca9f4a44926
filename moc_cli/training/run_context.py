"""What the setup, training and finishing steps of one run share, instead of long parameter lists."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Trainer

    from moc_cli.config import RunConfig
    from moc_cli.tasks.base import Task
    from moc_cli.training.callbacks import MetricsJsonlCallback, RoutingStatsCallback
    from moc_cli.training.data import RunData
    from moc_cli.training.run_dir import RunDir
    from moc_cli.training.stop_signals import SigtermHandler


class Once:
    """Calls `action` the first time it is called (no-op when `action` is None)."""

    def __init__(self, action: Callable[[], None] | None) -> None:
        self.action = action

    def __call__(self) -> None:
        if self.action is not None:
            action, self.action = self.action, None
            action()


@dataclass
class RunContext:
    """One run as set up: its config, folder, resume point and bookkeeping hooks."""

    cfg: RunConfig  # `output.dir` is the run folder this run writes (a new timestamped one by default)
    provenance: dict[str, str]
    run: RunDir
    resume_from: Path | None
    started: float  # perf_counter at the start, for the summary's wall time
    sigterm: SigtermHandler
    # Main process: clear an overwritten run, create the folders, record config.yaml and env.json.
    prepare_dir: Callable[[], None]
    # Records config.yaml once a resumed run has saved something (no-op for fresh runs).
    record_config: Once
    extra_callbacks: list[Any] = field(default_factory=list)


@dataclass
class TrainingParts:
    """What training built and the finishing step reads."""

    trainer: Trainer
    task: Task
    data: RunData
    source: str  # where the base model was loaded from
    trainable: int
    total: int
    routing: RoutingStatsCallback | None
    metrics_log: MetricsJsonlCallback
