"""Which splits `moc eval` can score: labelled ones, whatever their role in the task."""

from __future__ import annotations

import datasets

from moc_cli.training.data import RunData


def _run_data(**splits: list) -> RunData:
    features = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict({"input_ids": [[1]] * len(labels), "labels": labels})
            for name, labels in splits.items()
        }
    )
    return RunData(raw=features, features=features, train_split=None, eval_splits=["validation"])


def test_labelled_test_split_is_scorable_unlabelled_is_not():
    data = _run_data(validation=[0, 1], test=[1, 0, 1], hidden=[-1, -1])
    assert data.scorable("validation")
    assert data.scorable("test")  # a labelled test split (e.g. demo/sentiment) is scored
    assert not data.scorable("hidden")  # GLUE-style unlabelled test rows carry -1
    assert not data.scorable("missing")


def test_token_labels_are_scorable():
    data = _run_data(validation=[[-100, 5, 6]])
    assert data.scorable("validation")
