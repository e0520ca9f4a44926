"""Benchmarks as `Task` objects: data, features, metrics and label names (see base.py)."""

from moc_cli.tasks.base import DataSource, Task, TaskDataError, TaskOptionError
from moc_cli.tasks.registry import UnknownTaskError, get_task, list_tasks, register_task

__all__ = [
    "DataSource",
    "Task",
    "TaskDataError",
    "TaskOptionError",
    "UnknownTaskError",
    "get_task",
    "list_tasks",
    "register_task",
]
