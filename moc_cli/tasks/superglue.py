"""SuperGLUE (aps/super_glue): eight tasks with their official metrics and grouping.

Encoding choices: BoolQ/CB/RTE/WiC/WSC are sentence-pair classification; COPA is a multiple-choice
head over its two choices; MultiRC classifies every answer option and is scored per question;
ReCoRD classifies every (query, candidate entity) pair and picks the best entity per query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from moc_cli.tasks import io
from moc_cli.tasks.base import TaskDataError
from moc_cli.tasks.classification import MODEL_INPUT_KEYS, ClassificationTask, logits_of, map_splits
from moc_cli.tasks.metrics import accuracy, macro_f1, multirc_scores, record_predictions, record_scores
from moc_cli.tasks.registry import register_task

if TYPE_CHECKING:
    import datasets
    from transformers import EvalPrediction, PreTrainedTokenizerBase

BOOL_LABELS = ["False", "True"]


class SuperGlueTask(ClassificationTask):
    hub_path = "aps/super_glue"
    main_metric = "accuracy"

    def metrics(self, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {"accuracy": accuracy(preds, labels)}


@register_task
class BoolQ(SuperGlueTask):
    name = "superglue/boolq"
    description = "BoolQ yes/no questions (SuperGLUE): accuracy"
    hub_name = "boolq"
    text_columns = ("question", "passage")
    label_names = BOOL_LABELS
    truncation = "only_second"  # keep the question whole, cut the passage


@register_task
class CB(SuperGlueTask):
    name = "superglue/cb"
    description = "CommitmentBank 3-way entailment (SuperGLUE): accuracy and macro-F1"
    hub_name = "cb"
    text_columns = ("premise", "hypothesis")
    label_names = ["entailment", "contradiction", "neutral"]

    def metrics(self, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {"accuracy": accuracy(preds, labels), "f1": macro_f1(preds, labels, 3)}


@register_task
class SuperGlueRte(SuperGlueTask):
    name = "superglue/rte"
    description = "RTE entailment (SuperGLUE schema): accuracy"
    hub_name = "rte"
    text_columns = ("premise", "hypothesis")
    label_names = ["entailment", "not_entailment"]


@register_task
class WiC(SuperGlueTask):
    name = "superglue/wic"
    description = "Word-in-Context sense disambiguation (SuperGLUE): accuracy"
    hub_name = "wic"
    text_columns = ("sentence1", "sentence2")
    extra_columns = ("word",)
    optional_columns = ("idx", "start1", "start2", "end1", "end2")
    label_names = BOOL_LABELS

    def format_inputs(self, batch: dict[str, list]) -> tuple[list[str], list[str] | None]:
        # The target word leads the first segment so the model knows which word to compare.
        first = [f"{w}: {s}" for w, s in zip(batch["word"], batch["sentence1"], strict=True)]
        return first, list(batch["sentence2"])


def mark_wsc_spans(text: str, span1_index: int, span1_text: str, span2_index: int, span2_text: str) -> str:
    """Wrap the candidate noun phrase in *...* and the pronoun in #...# (word indices, as in the data)."""
    words = text.split(" ")
    spans = []
    for index, span, mark in ((span1_index, span1_text, "*"), (span2_index, span2_text, "#")):
        n = len(span.split(" "))
        if index >= 0 and index + n <= len(words) and " ".join(words[index : index + n]) == span:
            spans.append((index, n, mark))
    for index, n, mark in sorted(spans, reverse=True):  # right to left keeps earlier indices valid
        words[index : index + n] = [mark + " ".join(words[index : index + n]) + mark]
    return " ".join(words)


@register_task
class WSC(SuperGlueTask):
    name = "superglue/wsc"
    description = "Winograd Schema coreference (SuperGLUE): accuracy"
    hub_name = "wsc"
    text_columns = ("text",)
    extra_columns = ("span1_index", "span2_index", "span1_text", "span2_text")
    label_names = BOOL_LABELS

    def format_inputs(self, batch: dict[str, list]) -> tuple[list[str], list[str] | None]:
        keys = ("text", "span1_index", "span1_text", "span2_index", "span2_text")
        rows = zip(*(batch[k] for k in keys), strict=True)
        first, second = [], []
        for text, i1, t1, i2, t2 in rows:
            first.append(mark_wsc_spans(text, i1, t1, i2, t2))
            second.append(f'Does "{t2}" refer to "{t1}"?')
        return first, second


@register_task
class MultiRC(SuperGlueTask):
    name = "superglue/multirc"
    description = "MultiRC multi-answer reading comprehension (SuperGLUE): F1a and exact match"
    hub_name = "multirc"
    text_columns = ("paragraph", "question", "answer")
    extra_columns = ("idx",)
    optional_columns = ()
    label_names = BOOL_LABELS
    main_metric = "f1_a"
    truncation = "only_first"  # keep the question/answer whole, cut the paragraph

    def format_inputs(self, batch: dict[str, list]) -> tuple[list[str], list[str] | None]:
        second = [f"{q} {a}" for q, a in zip(batch["question"], batch["answer"], strict=True)]
        return list(batch["paragraph"]), second

    def preprocess(
        self, raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.DatasetDict:
        feats = super().preprocess(raw, tokenizer, max_length)
        for split, ds in raw.items():
            feats[split] = feats[split].add_column("group_id", multirc_group_ids(io.column_values(ds, "idx")))
        return feats

    def make_compute_metrics(
        self, features: datasets.Dataset
    ) -> Callable[[EvalPrediction], dict[str, float]] | None:
        groups = io.column_values(features, "group_id")

        def compute_metrics(p: EvalPrediction) -> dict[str, float]:
            preds = logits_of(p).argmax(-1)
            return multirc_scores(preds, np.asarray(p.label_ids), groups)

        return compute_metrics


def multirc_group_ids(idx: list[dict[str, int]]) -> list[int]:
    """One id per (paragraph, question), numbered in order of appearance: MultiRC's exact-match unit."""
    ids: dict[tuple[int, int], int] = {}
    return [ids.setdefault((i["paragraph"], i["question"]), len(ids)) for i in idx]


def record_passage(passage: str) -> str:
    # ReCoRD passages separate the CNN/DailyMail highlights with "@highlight" lines.
    return passage.replace("@highlight\n", "- ")


@register_task
class ReCoRD(SuperGlueTask):
    name = "superglue/record"
    description = "ReCoRD cloze-style entity choice (SuperGLUE): max token F1 and exact match"
    hub_name = "record"
    text_columns = ("passage", "query")
    extra_columns = ("entities", "answers", "idx")
    optional_columns = ("entity_spans",)
    label_column = None
    label_names = ["not_answer", "answer"]
    main_metric = "f1"
    truncation = "only_first"

    def validate_split(self, ds: datasets.Dataset, split: str, origin: str) -> datasets.Dataset:
        ds = super().validate_split(ds, split, origin)
        if not self.is_test_split(split):
            empty = [i for i, a in enumerate(io.column_values(ds, "answers")) if not a]
            if empty:
                raise TaskDataError(
                    f"task {self.name}: {origin} (split {split!r}): {len(empty)} row(s) without gold answers "
                    f"(first at {io.where(origin, empty[0])}); every non-test query needs at least one entry in 'answers'"
                )
        return ds

    def preprocess(
        self, raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.DatasetDict:
        def expand(batch: dict[str, list]) -> dict[str, list]:
            first, second, labels, groups, entities, answers = [], [], [], [], [], []
            for passage, query, ents, golds, idx in zip(
                batch["passage"],
                batch["query"],
                batch["entities"],
                batch["answers"],
                batch["idx"],
                strict=True,
            ):
                gold_set = set(golds)
                for entity in dict.fromkeys(ents):  # unique, in order
                    first.append(record_passage(passage))
                    second.append(query.replace("@placeholder", entity))
                    labels.append(int(entity in gold_set) if golds else -1)
                    groups.append(int(idx["query"]))
                    entities.append(entity)
                    answers.append(list(golds))
            enc = tokenizer(first, second, truncation=self.truncation, max_length=max_length)
            return {**enc, "labels": labels, "group_id": groups, "entity": entities, "answers": answers}

        return map_splits(self.name, raw, expand)

    def make_compute_metrics(
        self, features: datasets.Dataset
    ) -> Callable[[EvalPrediction], dict[str, float]] | None:
        groups = io.column_values(features, "group_id")
        entities = io.column_values(features, "entity")
        gold: dict[int, list[str]] = {}
        for g, a in zip(groups, io.column_values(features, "answers"), strict=True):
            gold.setdefault(g, a)

        def compute_metrics(p: EvalPrediction) -> dict[str, float]:
            logits = logits_of(p)
            scores = logits[:, 1] - logits[:, 0]  # evidence for "answer" relative to "not_answer"
            best = record_predictions(scores, groups, entities)
            order = list(best)
            return record_scores([best[q] for q in order], [gold[q] for q in order])

        return compute_metrics


@dataclass
class MultipleChoiceCollator:
    """Pads every choice of every example to one length: tensors of shape [batch, n_choices, seq]."""

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        n_choices = len(features[0]["input_ids"])
        keys = [k for k in MODEL_INPUT_KEYS if k != "labels" and k in features[0]]
        flat = [{k: f[k][c] for k in keys} for f in features for c in range(n_choices)]
        batch = self.tokenizer.pad(flat, padding=True, return_tensors="pt")
        out = {k: v.view(len(features), n_choices, -1) for k, v in batch.items()}
        if "labels" in features[0]:
            out["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return out


@register_task
class COPA(SuperGlueTask):
    name = "superglue/copa"
    description = "COPA causal reasoning, multiple choice over two alternatives (SuperGLUE): accuracy"
    kind = "multiple_choice"
    hub_name = "copa"
    text_columns = ("premise", "choice1", "choice2", "question")
    label_names = ["choice1", "choice2"]

    @staticmethod
    def context(premise: str, question: str) -> str:
        return f"{premise} What was the {question} of this?"

    def preprocess(
        self, raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.DatasetDict:
        def encode(batch: dict[str, list]) -> dict[str, list]:
            contexts = [self.context(p, q) for p, q in zip(batch["premise"], batch["question"], strict=True)]
            first = [c for c in contexts for _ in range(2)]
            second = [ch for pair in zip(batch["choice1"], batch["choice2"], strict=True) for ch in pair]
            enc = tokenizer(first, second, truncation=True, max_length=max_length)
            out = {k: [v[i : i + 2] for i in range(0, len(v), 2)] for k, v in enc.items()}
            out["labels"] = [int(v) for v in batch["label"]]
            return out

        return map_splits(self.name, raw, encode)

    def data_collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict]:
        return MultipleChoiceCollator(tokenizer)
