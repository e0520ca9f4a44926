"""SuperGLUE: counts and labels on the real splits, COPA batching, MultiRC/ReCoRD grouping with exact numbers."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import EvalPrediction

from moc_cli.tasks import DataSource, get_task
from moc_cli.tasks.io import column_values
from moc_cli.tasks.metrics import multirc_scores, normalize_answer, record_scores, token_f1
from moc_cli.tasks.superglue import mark_wsc_spans, multirc_group_ids


def label_counts(ds) -> dict:
    values, counts = np.unique(column_values(ds, "label"), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


SUPERGLUE_COUNTS = {
    "boolq": {"validation": (3270, {0: 1237, 1: 2033}), "test": (3245, {-1: 3245})},
    "cb": {
        "train": (250, {0: 115, 1: 119, 2: 16}),
        "validation": (56, {0: 23, 1: 28, 2: 5}),
        "test": (250, {-1: 250}),
    },
    "copa": {"train": (400, {0: 195, 1: 205}), "validation": (100, {0: 55, 1: 45}), "test": (500, {-1: 500})},
    "multirc": {"validation": (4848, {0: 2773, 1: 2075})},
    "rte": {
        "train": (2490, {0: 1249, 1: 1241}),
        "validation": (277, {0: 146, 1: 131}),
        "test": (3000, {-1: 3000}),
    },
    "wsc": {"train": (554, {0: 295, 1: 259}), "validation": (104, {0: 66, 1: 38}), "test": (146, {-1: 146})},
}


@pytest.mark.parametrize("config", sorted(SUPERGLUE_COUNTS))
def test_real_splits_load_with_official_counts(data_dir: Path, config: str):
    task = get_task(f"superglue/{config}")
    raw = task.load(DataSource(path=str(data_dir / "superglue" / config)))
    expected = SUPERGLUE_COUNTS[config]
    assert sorted(raw) == sorted(expected)
    for split, (rows, labels) in expected.items():
        assert raw[split].num_rows == rows
        assert label_counts(raw[split]) == labels


def test_cb_features_and_macro_f1(data_dir: Path, minilm_tokenizer):
    task = get_task("superglue/cb")
    raw = task.load(DataSource(path=str(data_dir / "superglue/cb")))
    feats = task.preprocess(datasets.DatasetDict({"validation": raw["validation"]}), minilm_tokenizer, 256)
    assert feats["validation"]["labels"] == list(raw["validation"]["label"])
    # per class F1: 0 -> 1/2, 1 -> 4/5, 2 -> 2/3
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    logits = np.eye(3)[preds]
    out = task.make_compute_metrics(feats["validation"])(EvalPrediction(predictions=logits, label_ids=labels))
    assert out == {"accuracy": pytest.approx(4 / 6), "f1": pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)}


def test_boolq_keeps_the_question_whole(data_dir: Path, minilm_tokenizer):
    task = get_task("superglue/boolq")
    raw = task.load(
        DataSource(
            files={"validation": str(data_dir / "superglue/boolq/validation.jsonl")}, max_eval_samples=20
        )
    )
    feats = task.preprocess(raw, minilm_tokenizer, 64)["validation"]
    for row, feat in zip(raw["validation"], feats, strict=True):
        question = minilm_tokenizer(row["question"], add_special_tokens=False)["input_ids"]
        assert len(feat["input_ids"]) <= 64
        assert feat["input_ids"][1 : 1 + len(question)] == question


def test_copa_multiple_choice_batches_real_records(data_dir: Path, minilm_tokenizer):
    task = get_task("superglue/copa")
    raw = task.load(DataSource(path=str(data_dir / "superglue/copa"), max_eval_samples=4))
    feats = task.preprocess(datasets.DatasetDict({"validation": raw["validation"]}), minilm_tokenizer, 128)
    rows = [
        json.loads(x)
        for x in (data_dir / "superglue/copa/validation.jsonl").read_text(encoding="utf-8").split("\n")[:4]
    ]
    batch = task.data_collator(minilm_tokenizer)([feats["validation"][i] for i in range(4)])
    width = batch["input_ids"].shape[2]
    assert batch["input_ids"].shape == (4, 2, width)
    assert batch["attention_mask"].shape == batch["token_type_ids"].shape == (4, 2, width)
    assert batch["labels"].tolist() == [r["label"] for r in rows] == [1, 1, 0, 1]
    for b, row in enumerate(rows):
        for c in range(2):
            ref = minilm_tokenizer(
                f"{row['premise']} What was the {row['question']} of this?", row[f"choice{c + 1}"]
            )["input_ids"]
            n = int(batch["attention_mask"][b, c].sum())
            assert n == len(ref)
            assert batch["input_ids"][b, c, :n].tolist() == ref
            assert set(batch["input_ids"][b, c, n:].tolist()) <= {minilm_tokenizer.pad_token_id}
    assert width == max(int(batch["attention_mask"][b, c].sum()) for b in range(4) for c in range(2))
    cm = task.make_compute_metrics(feats["validation"])
    logits = np.array([[0.1, 0.9], [0.2, 0.3], [0.5, 0.4], [0.9, 0.1]])  # picks 1, 1, 0, 0
    assert cm(EvalPrediction(predictions=logits, label_ids=np.array([1, 1, 0, 1]))) == {"accuracy": 0.75}


def test_wsc_marks_spans_on_a_real_record(data_dir: Path):
    row = json.loads((data_dir / "superglue/wsc/validation.jsonl").read_text(encoding="utf-8").split("\n")[0])
    marked = mark_wsc_spans(
        row["text"], row["span1_index"], row["span1_text"], row["span2_index"], row["span2_text"]
    )
    words = marked.split(" ")
    assert words[row["span1_index"]] == "*anyone*"
    assert words[row["span2_index"]] == "#him#"
    assert marked.replace("*", "").replace("#", "") == row["text"]
    # multi-word span, and a span that does not match its index is left unmarked
    assert (
        mark_wsc_spans("Maude and Dora saw them .", 0, "Maude and Dora", 4, "them")
        == "*Maude and Dora* saw #them# ."
    )
    assert mark_wsc_spans("a b c", 1, "x", 2, "c") == "a b #c#"


def test_multirc_real_grouping(data_dir: Path):
    rows = [
        json.loads(x)
        for x in (data_dir / "superglue/multirc/validation.jsonl").read_text(encoding="utf-8").split("\n")
        if x
    ]
    groups = multirc_group_ids([r["idx"] for r in rows])
    independent = {(r["idx"]["paragraph"], r["idx"]["question"]) for r in rows}
    assert len(set(groups)) == len(independent) == 953  # MultiRC dev: 953 questions over 83 paragraphs
    assert len({r["idx"]["paragraph"] for r in rows}) == 83
    # all answers of a question share its id, different questions never do
    pairs = {((r["idx"]["paragraph"], r["idx"]["question"]), g) for r, g in zip(rows, groups, strict=True)}
    assert len(pairs) == 953


def _multirc_row(p: int, q: int, a: int, label: int) -> dict:
    return {
        "paragraph": f"Paragraph {p}.",
        "question": f"Question {q}?",
        "answer": f"Answer {a}",
        "idx": {"paragraph": p, "question": q, "answer": a},
        "label": label,
    }


def test_multirc_metrics_hand_checked(tmp_path: Path, minilm_tokenizer):
    # question (0,0): labels 1 0 1, preds 1 0 0 -> not exact; (0,1): 0 1 vs 0 1 -> exact;
    # (1,0): 1 vs 0 -> not exact (same question number, other paragraph: another group)
    rows = [
        _multirc_row(0, 0, 0, 1),
        _multirc_row(0, 0, 1, 0),
        _multirc_row(0, 0, 2, 1),
        _multirc_row(0, 1, 0, 0),
        _multirc_row(0, 1, 1, 1),
        _multirc_row(1, 0, 0, 1),
    ]
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("superglue/multirc")
    raw = task.load(DataSource(path=str(tmp_path)))
    feats = task.preprocess(raw, minilm_tokenizer, 64)["validation"]
    assert feats["group_id"] == [0, 0, 0, 1, 1, 2]
    preds = np.array([1, 0, 0, 0, 1, 0])
    labels = np.array([r["label"] for r in rows])
    out = task.make_compute_metrics(feats)(EvalPrediction(predictions=np.eye(2)[preds], label_ids=labels))
    # F1a: tp=2, fp=0, fn=2 -> 2/3; EM: 1 of 3 questions; F1m: mean(2/3, 1, 0)
    assert out == {
        "exact_match": pytest.approx(1 / 3),
        "f1_m": pytest.approx(5 / 9),
        "f1_a": pytest.approx(2 / 3),
    }
    assert multirc_scores(preds, labels, [(0, 0)] * 3 + [(0, 1)] * 2 + [(1, 0)]) == out


def _record_row(query_id: int, entities: list[str], answers: list[str]) -> dict:
    return {
        "passage": f"Passage {query_id} with @highlight\nsome highlight.",
        "query": "The answer is @placeholder here.",
        "entities": entities,
        "entity_spans": {"text": entities, "start": [0] * len(entities), "end": [1] * len(entities)},
        "answers": answers,
        "idx": {"passage": query_id, "query": query_id},
    }


def test_record_grouping_hand_checked(tmp_path: Path, minilm_tokenizer):
    rows = [
        _record_row(0, ["Barack Obama", "Obama", "Hawaii"], ["Barack Obama", "Obama"]),
        _record_row(1, ["New York City", "York", "Paris", "York"], ["New York City"]),
    ]
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("superglue/record")
    raw = task.load(DataSource(path=str(tmp_path)))
    feats = task.preprocess(raw, minilm_tokenizer, 64)["validation"]
    # one row per unique candidate entity
    assert feats["entity"] == ["Barack Obama", "Obama", "Hawaii", "New York City", "York", "Paris"]
    assert feats["group_id"] == [0, 0, 0, 1, 1, 1]
    assert feats["labels"] == [1, 1, 0, 1, 0, 0]
    second = minilm_tokenizer.decode(feats[4]["input_ids"], skip_special_tokens=True)
    assert second.endswith("the answer is york here.")
    # query 0 picks "Obama" (EM 1, F1 1); query 1 picks "York" (EM 0, F1 2*(1*1/3)/(4/3) = 1/2)
    scores = np.array([0.2, 0.9, 0.1, 0.3, 0.8, -1.0])
    logits = np.stack([np.zeros_like(scores), scores], axis=1)
    out = task.make_compute_metrics(feats)(
        EvalPrediction(predictions=logits, label_ids=np.array(feats["labels"]))
    )
    assert out == {"exact_match": 0.5, "f1": pytest.approx(0.75)}


def test_record_token_f1_and_normalisation():
    assert normalize_answer("The  U.S. Army!") == "us army"
    assert token_f1("Obama", "Barack Obama") == pytest.approx(2 / 3)
    assert token_f1("the", "a") == 0.0
    assert record_scores(["an Obama"], [["Obama", "Barack Obama"]]) == {"exact_match": 1.0, "f1": 1.0}


def test_record_requires_answers_outside_test(tmp_path: Path):
    (tmp_path / "validation.jsonl").write_text(json.dumps(_record_row(0, ["A"], [])) + "\n")
    from moc_cli.tasks import TaskDataError

    with pytest.raises(TaskDataError, match=r"1 row\(s\) without gold answers \(first at line 1\)"):
        get_task("superglue/record").load(DataSource(path=str(tmp_path)))
