"""GLUE (nyu-mll/glue): nine tasks with their official metrics, one table row per task."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from moc_cli.tasks.classification import ClassificationTask
from moc_cli.tasks.metrics import glue_metric
from moc_cli.tasks.registry import register_task


class GlueTask(ClassificationTask):
    hub_path = "nyu-mll/glue"
    glue_config: ClassVar[str]

    def metrics(self, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return glue_metric(self.glue_config, preds, labels)


def glue_task(
    config: str,
    description: str,
    text_columns: tuple[str, ...],
    label_names: list[str] | None,
    main_metric: str = "accuracy",
    **attributes: Any,
) -> type[GlueTask]:
    """Define and register the task `glue/<config>`; `attributes` set further class attributes.

    The GLUE tasks differ only in data (columns, labels, metric, splits), so each is one call.
    """
    cls = type(
        config.capitalize(),
        (GlueTask,),
        {
            "__module__": __name__,
            "name": f"glue/{config}",
            "description": description,
            "hub_name": config,
            "glue_config": config,
            "text_columns": text_columns,
            "label_names": label_names,
            "main_metric": main_metric,
            **attributes,
        },
    )
    return register_task(cls)


Cola = glue_task(
    "cola",
    "CoLA acceptability (GLUE): Matthews correlation",
    ("sentence",),
    ["unacceptable", "acceptable"],
    main_metric="matthews_correlation",
)
Sst2 = glue_task("sst2", "SST-2 sentiment (GLUE): accuracy", ("sentence",), ["negative", "positive"])
Mrpc = glue_task(
    "mrpc",
    "MRPC paraphrase (GLUE): accuracy and F1",
    ("sentence1", "sentence2"),
    ["not_equivalent", "equivalent"],
)
Stsb = glue_task(
    "stsb",
    "STS-B similarity regression (GLUE): Pearson and Spearman",
    ("sentence1", "sentence2"),
    None,
    main_metric="pearson",
    kind="regression",
)
Qqp = glue_task(
    "qqp",
    "QQP duplicate questions (GLUE): accuracy and F1",
    ("question1", "question2"),
    ["not_duplicate", "duplicate"],
)
Mnli = glue_task(
    "mnli",
    "MNLI entailment (GLUE): accuracy on matched and mismatched validation",
    ("premise", "hypothesis"),
    ["entailment", "neutral", "contradiction"],
    eval_splits=["validation_matched", "validation_mismatched"],
    test_split="test_matched",
    extra_splits=("test_mismatched",),
)
Qnli = glue_task(
    "qnli",
    "QNLI question answering entailment (GLUE): accuracy",
    ("question", "sentence"),
    ["entailment", "not_entailment"],
)
Rte = glue_task(
    "rte", "RTE entailment (GLUE): accuracy", ("sentence1", "sentence2"), ["entailment", "not_entailment"]
)
Wnli = glue_task(
    "wnli",
    "WNLI pronoun entailment (GLUE): accuracy",
    ("sentence1", "sentence2"),
    ["not_entailment", "entailment"],
)
