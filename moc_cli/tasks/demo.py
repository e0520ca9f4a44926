"""Demo tasks on packaged offline data: Rotten Tomatoes sentiment and chit-chat continuation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from moc_cli.tasks import io
from moc_cli.tasks.base import DataSource
from moc_cli.tasks.classification import ClassificationTask
from moc_cli.tasks.instruct import InstructTask
from moc_cli.tasks.metrics import accuracy
from moc_cli.tasks.registry import register_task

if TYPE_CHECKING:
    import datasets


@register_task
class DemoSentiment(ClassificationTask):
    name = "demo/sentiment"
    description = "Rotten Tomatoes review sentiment (packaged, offline): accuracy"
    label_names = ["rotten", "fresh"]
    text_columns = ("text",)
    optional_columns = ()
    main_metric = "accuracy"

    def load(self, source: DataSource) -> datasets.DatasetDict:
        if source.path or source.files:  # same columns from local files
            return super().load(source)
        from moc_cli.assets.datasets import rotten_tomatoes_splits

        self.apply_options(source.options)
        dd = rotten_tomatoes_splits(seed=source.seed)
        self.data_origin = {s: f"rotten_tomatoes_splits(seed={source.seed})[{s}]" for s in dd}
        return self.validated_and_limited(dd, source)

    def metrics(self, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {"accuracy": accuracy(preds, labels)}


@register_task
class DemoInstruct(InstructTask):
    name = "demo/instruct"
    description = "Chit-chat continuation (packaged conversations, offline): held-out loss/perplexity"
    option_defaults: ClassVar[dict[str, Any]] = {
        **InstructTask.option_defaults,
        "max_conversations": 2000,  # conversations taken from the packaged corpus (None: all 7,168)
        "validation_size": 0.05,
    }

    def load(self, source: DataSource) -> datasets.DatasetDict:
        if source.path or source.files:
            return super().load(source)
        import datasets

        from moc_cli.assets.datasets import chitchat_conversations

        self.apply_options(source.options)
        conversations = chitchat_conversations(max_conversations=self.options["max_conversations"])
        origin = "chitchat_conversations()"
        train = datasets.Dataset.from_dict({"messages": conversations})
        train = self.validate_split(train, "train", origin)
        parts = train.train_test_split(
            test_size=self.options["validation_size"], seed=source.seed, shuffle=True
        )
        dd = datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]})
        self.data_origin = {"train": origin, "validation": origin}
        return io.limit_samples(dd, source, "train", ["validation"], "test")
