"""The task contract: everything the training runner needs to know about a benchmark.

A task owns data (loading, validation, features), metrics and label names, and nothing about
training mechanics. Adding a task is one module subclassing `Task` plus one recipe YAML.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import datasets
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase

TaskKind = Literal["seq_cls", "regression", "multiple_choice", "causal_lm"]


@dataclass
class DataSource:
    """Where a task's data comes from (the `data:` section of a run config).

    `path` is a Hub dataset id (`nyu-mll/glue`), a local folder of `<split>.jsonl|json|csv|parquet`,
    a single file, or a `pkg://` asset URI; `None` means the task's default source.
    `files` maps split name to a file and overrides `path`.
    """

    path: str | None = None
    name: str | None = None
    files: dict[str, str] | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_test_samples: int | None = None
    seed: int = 42
    options: dict[str, Any] = field(default_factory=dict)


class TaskDataError(ValueError):
    """Data that does not match what the task expects (names task, file, columns/labels, expectation)."""


class TaskOptionError(ValueError):
    """An unknown or invalid task option (names the task, the option and the accepted ones)."""


class Task:
    """Base class. Subclasses set the class attributes and implement the methods.

    Task options (the extra keys of the config's `task:` section, e.g. `packing: true`) are passed
    to the constructor; `option_defaults` lists the accepted names with their defaults, and the
    resolved values live in `self.options`.
    """

    name: ClassVar[str]  # registry key, e.g. "glue/sst2"
    description: ClassVar[str]  # one line for `moc ls`
    kind: ClassVar[TaskKind]
    hub_path: ClassVar[str | None] = None  # default source, e.g. "nyu-mll/glue"
    hub_name: ClassVar[str | None] = None  # Hub config name, e.g. "sst2"
    label_names: ClassVar[list[str] | None] = None
    main_metric: ClassVar[str]  # key of compute_metrics' result, e.g. "matthews_correlation"
    greater_is_better: ClassVar[bool] = True
    train_split: ClassVar[str] = "train"
    eval_splits: ClassVar[list[str]] = ["validation"]  # MNLI: validation_matched, validation_mismatched
    test_split: ClassVar[str | None] = "test"
    option_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = dict(self.option_defaults)
        self.apply_options(options)

    def apply_options(self, options: Mapping[str, Any]) -> None:
        """Validate and set task options (also called by `load` with `DataSource.options`)."""
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            known = ", ".join(sorted(self.option_defaults)) or "none"
            raise TaskOptionError(
                f"task {self.name!r}: unknown option(s) {', '.join(unknown)}; accepted options: {known}"
            )
        self.options.update(options)
        self.check_options()

    def check_options(self) -> None:
        """Validate option values (raise TaskOptionError); subclasses with options override this."""

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.label_names or [])

    @property
    def id2label(self) -> dict[int, str] | None:
        """For `model.config.id2label` (None for regression and causal LM tasks)."""
        if self.kind not in ("seq_cls", "multiple_choice") or not self.label_names:
            return None
        return dict(enumerate(self.label_names))

    def load(self, source: DataSource) -> datasets.DatasetDict:
        """Raw splits with the Hub dataset's columns, validated (raises TaskDataError).

        `source.options`, when given, are applied as task options first.
        """
        raise NotImplementedError

    def preprocess(
        self, raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.DatasetDict:
        """Model-ready features (`input_ids`, `attention_mask`, `labels`, ...) for every split.

        Unlabelled test splits (label -1) come back without a `labels` column so that
        `Trainer.predict` runs without a loss. Extra bookkeeping columns (e.g. `group_id`) may be
        present; the task's collator drops them.
        """
        raise NotImplementedError

    def data_collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict]:
        """Collator for `preprocess` output."""
        raise NotImplementedError

    def make_compute_metrics(
        self, features: datasets.Dataset
    ) -> Callable[[EvalPrediction], dict[str, float]] | None:
        """`compute_metrics` for Trainer, bound to the eval features (grouping needs their ids).

        Returns None for tasks scored outside Trainer's prediction loop (causal LM tasks).
        """
        raise NotImplementedError

    def finalize_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Derived metrics from Trainer's evaluate() output (causal LM: perplexity from eval loss)."""
        return dict(metrics)

    def evaluate_generation(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        raw: datasets.Dataset,
        output_dir: str | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 8,
    ) -> dict[str, float]:
        """Generative evaluation (causal LM tasks): e.g. commonsense accuracy, or sample files."""
        return {}
