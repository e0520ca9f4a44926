"""GLUE: official row counts and label sets on the real files, metrics against independent references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from transformers import EvalPrediction

from moc_cli.tasks import DataSource, get_task
from moc_cli.tasks.io import column_values
from moc_cli.tasks.metrics import evaluate_module_path, glue_metric


def label_counts(ds) -> dict:
    values, counts = np.unique(column_values(ds, "label"), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


# (task, split) -> (rows, label counts), from shared/data/README.md
GLUE_COUNTS = {
    ("cola", "train"): (8551, {0: 2528, 1: 6023}),
    ("cola", "validation"): (1043, {0: 322, 1: 721}),
    ("cola", "test"): (1063, {-1: 1063}),
    ("mrpc", "train"): (3668, {0: 1194, 1: 2474}),
    ("mrpc", "validation"): (408, {0: 129, 1: 279}),
    ("mrpc", "test"): (1725, {0: 578, 1: 1147}),
    ("qnli", "validation"): (5463, {0: 2702, 1: 2761}),
    ("qnli", "test"): (5463, {-1: 5463}),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}),
    ("rte", "validation"): (277, {0: 146, 1: 131}),
    ("rte", "test"): (3000, {-1: 3000}),
    ("sst2", "train"): (67349, {0: 29780, 1: 37569}),
    ("sst2", "validation"): (872, {0: 428, 1: 444}),
    ("sst2", "test"): (1821, {-1: 1821}),
}


@pytest.mark.parametrize("config", ["cola", "mrpc", "qnli", "rte", "sst2"])
def test_real_splits_load_with_official_counts(data_dir: Path, config: str, minilm_tokenizer):
    task = get_task(f"glue/{config}")
    raw = task.load(DataSource(path=str(data_dir / "glue" / config)))
    expected = {split: v for (c, split), v in GLUE_COUNTS.items() if c == config}
    assert sorted(raw) == sorted(expected)
    for split, (rows, labels) in expected.items():
        assert raw[split].num_rows == rows
        assert label_counts(raw[split]) == labels
        assert set(task.text_columns) <= set(raw[split].column_names)
    # features: every validation split up to ~1k rows in full, and the first 200 test rows
    import datasets

    small = {s: raw[s] for s in raw if s == "validation" and raw[s].num_rows <= 1100}
    if "test" in raw:
        small["test"] = raw["test"].select(range(200))
    feats = task.preprocess(datasets.DatasetDict(small), minilm_tokenizer, 128)
    for split, ds in feats.items():
        assert ds.num_rows == small[split].num_rows
        assert max(len(x) for x in ds["input_ids"]) <= 128
        unlabelled = expected[split][1] == {-1: expected[split][0]}
        assert ("labels" in ds.column_names) == (not unlabelled)
        if not unlabelled:
            assert ds["labels"] == list(small[split]["label"])


def test_pair_encoding_matches_tokenizer(data_dir: Path, minilm_tokenizer):
    task = get_task("glue/rte")
    raw = task.load(
        DataSource(files={"validation": str(data_dir / "glue/rte/validation.jsonl")}, max_eval_samples=3)
    )
    assert list(raw) == ["validation"]
    feats = task.preprocess(raw, minilm_tokenizer, 128)["validation"]
    first = json.loads((data_dir / "glue/rte/validation.jsonl").read_text(encoding="utf-8").split("\n")[0])
    ref = minilm_tokenizer(first["sentence1"], first["sentence2"], truncation=True, max_length=128)
    assert feats[0]["input_ids"] == ref["input_ids"]
    assert feats[0]["token_type_ids"] == ref["token_type_ids"]
    assert feats.num_rows == 3 and feats[0]["labels"] == first["label"]
    batch = task.data_collator(minilm_tokenizer)([feats[i] for i in range(3)])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape[1] == max(len(feats[i]["input_ids"]) for i in range(3))
    assert batch["labels"].tolist() == feats["labels"]


# ---- metrics against independent references ---------------------------------------------------
PREDS = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
LABELS = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0])
# confusion: tp=4, tn=3, fp=2, fn=1
TP, TN, FP, FN = 4, 3, 2, 1


def test_cola_matthews_by_formula():
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert glue_metric("cola", PREDS, LABELS) == {"matthews_correlation": pytest.approx(mcc, abs=1e-12)}
    assert glue_metric("cola", np.zeros(4, int), np.array([0, 1, 0, 1])) == {"matthews_correlation": 0.0}


def test_accuracy_and_f1_by_counting():
    f1 = 2 * TP / (2 * TP + FP + FN)
    assert glue_metric("mrpc", PREDS, LABELS) == {"accuracy": 0.7, "f1": pytest.approx(f1, abs=1e-12)}
    assert glue_metric("qqp", PREDS, LABELS)["f1"] == pytest.approx(8 / 11, abs=1e-12)
    for config in ("sst2", "qnli", "rte", "wnli", "mnli"):
        assert glue_metric(config, PREDS, LABELS) == {"accuracy": 0.7}


def test_stsb_pearson_spearman_by_numpy():
    preds = np.array([0.5, 2.0, 3.5, 1.0, 4.8, 2.2])
    labels = np.array([0.0, 2.4, 3.0, 1.6, 5.0, 1.8])
    pearson = float(np.corrcoef(preds, labels)[0, 1])
    ranks = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731 (no ties here)
    spearman = float(np.corrcoef(ranks(preds), ranks(labels))[0, 1])
    out = glue_metric("stsb", preds, labels)
    assert out["pearson"] == pytest.approx(pearson, abs=1e-12)
    assert out["spearmanr"] == pytest.approx(spearman, abs=1e-12)


def test_compute_metrics_from_logits():
    logits = np.stack([1 - PREDS, PREDS], axis=1).astype(float)  # argmax == PREDS
    cm = get_task("glue/mrpc").make_compute_metrics(None)
    assert cm(EvalPrediction(predictions=logits, label_ids=LABELS)) == glue_metric("mrpc", PREDS, LABELS)
    scores = np.array([[0.5], [2.0], [3.5], [1.0]])
    stsb = get_task("glue/stsb").make_compute_metrics(None)
    out = stsb(EvalPrediction(predictions=(scores,), label_ids=np.array([0.0, 2.4, 3.0, 1.6])))
    assert out == glue_metric("stsb", scores[:, 0], np.array([0.0, 2.4, 3.0, 1.6]))


def test_evaluate_module_loads_locally_and_agrees():
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(evaluate_module_path(), "mrpc")
    out = metric.compute(predictions=PREDS.tolist(), references=LABELS.tolist())
    assert out == glue_metric("mrpc", PREDS, LABELS)
    cola = evaluate.load(evaluate_module_path(), "cola")
    assert cola.compute(predictions=PREDS.tolist(), references=LABELS.tolist()) == glue_metric(
        "cola", PREDS, LABELS
    )
