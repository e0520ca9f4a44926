"""Shared machinery for (sentence or sentence-pair) classification and regression tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from moc_cli.tasks import io
from moc_cli.tasks.base import DataSource, Task

if TYPE_CHECKING:
    import datasets
    from transformers import EvalPrediction, PreTrainedTokenizerBase

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


@dataclass
class PaddingCollator:
    """Dynamic padding of model inputs; bookkeeping columns (group ids, entities) are dropped."""

    tokenizer: PreTrainedTokenizerBase
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        kept = [{k: f[k] for k in MODEL_INPUT_KEYS if k in f and k != "labels"} for f in features]
        batch = self.tokenizer.pad(
            kept, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
        )
        batch = dict(batch)
        if "labels" in features[0]:
            labels = [f["labels"] for f in features]
            dtype = torch.float32 if isinstance(labels[0], float) else torch.long
            batch["labels"] = torch.tensor(labels, dtype=dtype)
        return batch


def logits_of(p: EvalPrediction) -> np.ndarray:
    preds = p.predictions
    if isinstance(preds, (tuple, list)):  # models may return extra outputs after the logits
        preds = preds[0]
    return np.asarray(preds)


class ClassificationTask(Task):
    """Tasks whose rows map to one (text_a, text_b) input and one label.

    Subclasses set `text_columns` (one or two Hub columns) or override `format_inputs`, list
    other required columns in `extra_columns`, and implement `metrics(preds, labels)`.
    """

    kind = "seq_cls"
    text_columns: ClassVar[tuple[str, ...]] = ()
    extra_columns: ClassVar[tuple[str, ...]] = ()
    optional_columns: ClassVar[tuple[str, ...]] = ("idx",)
    label_column: ClassVar[str | None] = "label"
    extra_splits: ClassVar[tuple[str, ...]] = ()
    truncation: ClassVar[str | bool] = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.data_origin: dict[str, str] = {}

    # ---- loading -----------------------------------------------------------------------------
    @property
    def splits(self) -> list[str]:
        names = [self.train_split, *self.eval_splits]
        if self.test_split:
            names.append(self.test_split)
        return [*names, *self.extra_splits]

    @staticmethod
    def is_test_split(split: str) -> bool:
        return split.startswith("test")

    @property
    def required_columns(self) -> tuple[str, ...]:
        label = (self.label_column,) if self.label_column else ()
        return (*self.text_columns, *self.extra_columns, *label)

    def load(self, source: DataSource) -> datasets.DatasetDict:
        self.apply_options(source.options)
        dd, self.data_origin = io.load_raw(self.name, source, self.splits, self.hub_path, self.hub_name)
        return self.validated_and_limited(dd, source)

    def validated_and_limited(self, dd: datasets.DatasetDict, source: DataSource) -> datasets.DatasetDict:
        """Validate every split (origins from `self.data_origin`), then apply the sample limits."""
        for split in list(dd):
            dd[split] = self.validate_split(dd[split], split, self.data_origin[split])
        return io.limit_samples(dd, source, self.train_split, self.eval_splits, self.test_split)

    def validate_split(self, ds: datasets.Dataset, split: str, origin: str) -> datasets.Dataset:
        is_test = self.is_test_split(split)
        label = self.label_column
        if (
            label
            and is_test
            and label not in ds.column_names
            and set(self.required_columns) - {label} <= set(ds.column_names)
        ):
            ds = ds.add_column(label, [-1.0 if self.kind == "regression" else -1] * len(ds))
        io.check_columns(self.name, ds, origin, split, self.required_columns, self.optional_columns)
        io.check_texts(self.name, ds, origin, split, self.text_columns)
        if label:
            if self.kind != "regression" and self.label_names:
                ds = io.normalize_labels(ds, self.label_names, label)
            io.check_labels(
                self.name,
                ds,
                origin,
                split,
                None if self.kind == "regression" else self.label_names,
                is_test,
                label,
            )
        return ds

    # ---- features ----------------------------------------------------------------------------
    def format_inputs(self, batch: dict[str, list]) -> tuple[list[str], list[str] | None]:
        """Texts (first segment, optional second segment) for a batch of raw rows."""
        first = [str(t) for t in batch[self.text_columns[0]]]
        second = [str(t) for t in batch[self.text_columns[1]]] if len(self.text_columns) > 1 else None
        return first, second

    def preprocess(
        self, raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.DatasetDict:
        def encode(batch: dict[str, list]) -> dict[str, list]:
            first, second = self.format_inputs(batch)
            enc = tokenizer(first, second, truncation=self.truncation, max_length=max_length)
            out = dict(enc)
            if self.label_column:
                values = batch[self.label_column]
                out["labels"] = (
                    [float(v) for v in values] if self.kind == "regression" else [int(v) for v in values]
                )
            return out

        return map_splits(self.name, raw, encode)

    def data_collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict]:
        return PaddingCollator(tokenizer)

    # ---- metrics -----------------------------------------------------------------------------
    def metrics(self, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def predictions_from_logits(self, logits: np.ndarray) -> np.ndarray:
        if self.kind == "regression":
            return logits.reshape(len(logits), -1)[:, 0]
        return logits.argmax(-1)

    def make_compute_metrics(
        self, features: datasets.Dataset
    ) -> Callable[[EvalPrediction], dict[str, float]] | None:
        def compute_metrics(p: EvalPrediction) -> dict[str, float]:
            preds = self.predictions_from_logits(logits_of(p))
            return self.metrics(preds, np.asarray(p.label_ids))

        return compute_metrics


def map_splits(
    task_name: str, raw: datasets.DatasetDict, encode: Callable[[dict[str, list]], dict[str, list]]
) -> datasets.DatasetDict:
    """Features for every split: batched `encode` replaces the raw columns, then `drop_unlabelled`."""
    import datasets

    out = {}
    for split, ds in raw.items():
        feats = ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"{task_name} {split}")
        out[split] = drop_unlabelled(feats, split)
    return datasets.DatasetDict(out)


def drop_unlabelled(features: datasets.Dataset, split: str) -> datasets.Dataset:
    """Unlabelled test rows (label -1) lose the `labels` column so predict() computes no loss."""
    test = ClassificationTask.is_test_split(split) and "labels" in features.column_names and len(features)
    if test and features.unique("labels") in ([-1], [-1.0]):
        return features.remove_columns("labels")
    return features
