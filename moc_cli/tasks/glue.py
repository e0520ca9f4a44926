"""GLUE (nyu-mll/glue): nine tasks with their official metrics."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from moc_cli.tasks.classification import ClassificationTask
from moc_cli.tasks.metrics import glue_metric
from moc_cli.tasks.registry import register_task


class GlueTask(ClassificationTask):
    hub_path = "nyu-mll/glue"
    glue_config: ClassVar[str]

    def metrics(self, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return glue_metric(self.glue_config, preds, labels)


@register_task
class Cola(GlueTask):
    name = "glue/cola"
    description = "CoLA acceptability (GLUE): Matthews correlation"
    hub_name = glue_config = "cola"
    text_columns = ("sentence",)
    label_names = ["unacceptable", "acceptable"]
    main_metric = "matthews_correlation"


@register_task
class Sst2(GlueTask):
    name = "glue/sst2"
    description = "SST-2 sentiment (GLUE): accuracy"
    hub_name = glue_config = "sst2"
    text_columns = ("sentence",)
    label_names = ["negative", "positive"]
    main_metric = "accuracy"


@register_task
class Mrpc(GlueTask):
    name = "glue/mrpc"
    description = "MRPC paraphrase (GLUE): accuracy and F1"
    hub_name = glue_config = "mrpc"
    text_columns = ("sentence1", "sentence2")
    label_names = ["not_equivalent", "equivalent"]
    main_metric = "accuracy"


@register_task
class Stsb(GlueTask):
    name = "glue/stsb"
    description = "STS-B similarity regression (GLUE): Pearson and Spearman"
    kind = "regression"
    hub_name = glue_config = "stsb"
    text_columns = ("sentence1", "sentence2")
    label_names = None
    main_metric = "pearson"


@register_task
class Qqp(GlueTask):
    name = "glue/qqp"
    description = "QQP duplicate questions (GLUE): accuracy and F1"
    hub_name = glue_config = "qqp"
    text_columns = ("question1", "question2")
    label_names = ["not_duplicate", "duplicate"]
    main_metric = "accuracy"


@register_task
class Mnli(GlueTask):
    name = "glue/mnli"
    description = "MNLI entailment (GLUE): accuracy on matched and mismatched validation"
    hub_name = glue_config = "mnli"
    text_columns = ("premise", "hypothesis")
    label_names = ["entailment", "neutral", "contradiction"]
    main_metric = "accuracy"
    eval_splits = ["validation_matched", "validation_mismatched"]
    test_split = "test_matched"
    extra_splits = ("test_mismatched",)


@register_task
class Qnli(GlueTask):
    name = "glue/qnli"
    description = "QNLI question answering entailment (GLUE): accuracy"
    hub_name = glue_config = "qnli"
    text_columns = ("question", "sentence")
    label_names = ["entailment", "not_entailment"]
    main_metric = "accuracy"


@register_task
class Rte(GlueTask):
    name = "glue/rte"
    description = "RTE entailment (GLUE): accuracy"
    hub_name = glue_config = "rte"
    text_columns = ("sentence1", "sentence2")
    label_names = ["entailment", "not_entailment"]
    main_metric = "accuracy"


@register_task
class Wnli(GlueTask):
    name = "glue/wnli"
    description = "WNLI pronoun entailment (GLUE): accuracy"
    hub_name = glue_config = "wnli"
    text_columns = ("sentence1", "sentence2")
    label_names = ["not_entailment", "entailment"]
    main_metric = "accuracy"
