"""Task and data for a run config: raw splits, model-ready features, which splits train and evaluate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moc_cli.training.errors import RunSetupError

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from moc_cli.config import DataSection, TaskSection
    from moc_cli.tasks.base import Task


def load_task(task_cfg: TaskSection) -> Task:
    """The registered task named by `task.name`, constructed with `task.options`."""
    from moc_cli.tasks.registry import get_task

    return get_task(task_cfg.name, dict(task_cfg.options))


def data_source(data: DataSection, task_cfg: TaskSection, seed: int) -> Any:
    """The `DataSource` for the `data:` section (task options travel along for loaders that need them)."""
    from moc_cli.tasks.base import DataSource

    return DataSource(
        path=data.path,
        name=data.name,
        files=data.files,
        max_train_samples=data.max_train_samples,
        max_eval_samples=data.max_eval_samples,
        max_test_samples=data.max_test_samples,
        seed=seed,
        options=dict(task_cfg.options),
    )


@dataclass
class RunData:
    """Raw splits (for generation), features (for Trainer), and the split roles."""

    raw: datasets.DatasetDict
    features: datasets.DatasetDict
    train_split: str | None
    eval_splits: list[str]

    @property
    def train(self) -> datasets.Dataset | None:
        return self.features[self.train_split] if self.train_split else None

    def eval(self, split: str) -> datasets.Dataset:
        return self.features[split]

    def scorable(self, split: str) -> bool:
        """A split can be scored when it has labels and they are not the unlabelled-test marker -1."""
        if split not in self.features or "labels" not in self.features[split].column_names:
            return False
        labels = self.features[split]["labels"]
        return len(labels) > 0 and any(_is_labelled(x) for x in labels)


def _is_labelled(label: Any) -> bool:
    # Per-token labels (causal LM) are lists; class ids use -1 for unlabelled test rows.
    return isinstance(label, list) or label != -1


def load_run_data(
    task: Task,
    data_cfg: DataSection,
    task_cfg: TaskSection,
    seed: int,
    tokenizer: PreTrainedTokenizerBase,
    need_train: bool,
) -> RunData:
    """Load, validate and tokenize the task's data."""
    raw = task.load(data_source(data_cfg, task_cfg, seed))
    features = task.preprocess(raw, tokenizer, task_cfg.max_length)
    train_split = task.train_split if task.train_split in features else None
    if need_train and train_split is None:
        raise RunSetupError(
            f"task {task.name}: the data has no {task.train_split!r} split (found: {', '.join(features) or 'none'}); "
            f"point data.path or data.files.{task.train_split} at the training file"
        )
    eval_splits = [
        split for split in task.eval_splits if split in features and "labels" in features[split].column_names
    ]
    return RunData(raw=raw, features=features, train_split=train_split, eval_splits=eval_splits)
