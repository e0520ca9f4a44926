"""GLUE and SuperGLUE metrics with scikit-learn/scipy (evaluate's Hub scripts cannot load offline).

Keys follow the names of `evaluate`'s glue/super_glue metrics, so results are comparable.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

import numpy as np


def accuracy(preds: Sequence, labels: Sequence) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, preds))


def binary_f1(preds: Sequence, labels: Sequence) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, average="binary", zero_division=0.0))


def macro_f1(preds: Sequence, labels: Sequence, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over all classes (CB's F1)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, average="macro", labels=list(range(num_labels)), zero_division=0.0))


def matthews_correlation(preds: Sequence, labels: Sequence) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def pearson_spearman(preds: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    return {
        "pearson": float(pearsonr(preds, labels)[0]),
        "spearmanr": float(spearmanr(preds, labels)[0]),
    }


GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "mnli_matched": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def glue_metric(config: str, preds: Sequence, labels: Sequence) -> dict[str, float]:
    """The official GLUE metric(s) of one task, from class predictions (or scores for stsb)."""
    if config not in GLUE_METRICS:
        raise KeyError(f"unknown GLUE config {config!r}; expected one of {sorted(GLUE_METRICS)}")
    if config == "cola":
        return {"matthews_correlation": matthews_correlation(preds, labels)}
    if config == "stsb":
        return pearson_spearman(preds, labels)
    if config in ("mrpc", "qqp"):
        return {"accuracy": accuracy(preds, labels), "f1": binary_f1(preds, labels)}
    return {"accuracy": accuracy(preds, labels)}


def multirc_scores(
    preds: Sequence[int], labels: Sequence[int], question_ids: Sequence[Hashable]
) -> dict[str, float]:
    """MultiRC: F1a (binary F1 over every answer option), exact match and F1m per question.

    `question_ids` identifies the (paragraph, question) each answer option belongs to.
    """
    from sklearn.metrics import f1_score

    groups: dict[Hashable, list[tuple[int, int]]] = defaultdict(list)
    for p, y, q in zip(preds, labels, question_ids, strict=True):
        groups[q].append((int(p), int(y)))
    em = [all(p == y for p, y in pairs) for pairs in groups.values()]
    f1m = [
        f1_score([y for _, y in pairs], [p for p, _ in pairs], average="binary", zero_division=0.0)
        for pairs in groups.values()
    ]
    return {
        "exact_match": float(np.mean(em)),
        "f1_m": float(np.mean(f1m)),
        "f1_a": binary_f1(preds, labels),
    }


def normalize_answer(text: str) -> str:
    """SQuAD/ReCoRD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def record_scores(predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """ReCoRD: per query the max token F1 and max exact match over its gold answers, averaged."""
    f1s, ems = [], []
    for pred, golds in zip(predictions, gold_answers, strict=True):
        f1s.append(max((token_f1(pred, g) for g in golds), default=0.0))
        ems.append(max((float(normalize_answer(pred) == normalize_answer(g)) for g in golds), default=0.0))
    return {"exact_match": float(np.mean(ems)), "f1": float(np.mean(f1s))}


def record_predictions(
    scores: Sequence[float], query_ids: Sequence[Hashable], entities: Sequence[str]
) -> dict[Hashable, str]:
    """Per query, the candidate entity with the highest score (first one on ties)."""
    best: dict[Hashable, tuple[float, str]] = {}
    for s, q, e in zip(scores, query_ids, entities, strict=True):
        if q not in best or float(s) > best[q][0]:
            best[q] = (float(s), e)
    return {q: e for q, (_, e) in best.items()}


def evaluate_module_path(name: str = "moc_glue") -> str:
    """Folder of a local `evaluate` metric script: `evaluate.load(evaluate_module_path(), "mrpc")`."""
    from pathlib import Path

    path = Path(__file__).parent / "evaluate_metrics" / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"no local evaluate metric {name!r} at {path}")
    return str(path)
