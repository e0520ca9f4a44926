"""Malformed data files through `moc train`: the error names the file, the line and the field, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moc_cli.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def sst2_rows(shared_data: Path) -> list[dict]:
    source = shared_data / "glue" / "sst2" / "train.jsonl"
    if not source.is_file():
        pytest.skip(f"SST-2 data not found at {source}")
    with source.open(encoding="utf-8") as fh:
        return [json.loads(next(fh)) for _ in range(24)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _train(tiny_bert: Path, train: Path, validation: Path, out: Path):
    return runner.invoke(
        app,
        [
            "train",
            "--recipe",
            "demo/sentiment",
            f"model.name_or_path={tiny_bert}",
            "task.name=glue/sst2",
            "task.max_length=16",
            f"data.files.train={train}",
            f"data.files.validation={validation}",
            "training.max_steps=1",
            "output.progress=none",
            "--output-dir",
            str(out),
        ],
    )


def _assert_clean_failure(result, *fragments: str) -> str:
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    return result.output


@pytest.fixture
def good(sst2_rows, tmp_path) -> Path:
    return _write(tmp_path / "validation.jsonl", [json.dumps(r) for r in sst2_rows[:8]])


def test_bad_json_line(tiny_bert, sst2_rows, good, tmp_path) -> None:
    lines = [json.dumps(r) for r in sst2_rows]
    lines[6] = lines[6][:-5]  # line 7 loses its closing characters
    train = _write(tmp_path / "train.jsonl", lines)
    _assert_clean_failure(
        _train(tiny_bert, train, good, tmp_path / "run"),
        f"task glue/sst2: {train}: line 7: invalid JSON (",
        "each line must be one JSON object",
    )
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_missing_column_in_file(tiny_bert, sst2_rows, good, tmp_path) -> None:
    train = _write(
        tmp_path / "train.jsonl",
        [json.dumps({"text": r["sentence"], "label": r["label"]}) for r in sst2_rows],
    )
    _assert_clean_failure(
        _train(tiny_bert, train, good, tmp_path / "run"),
        f"task glue/sst2: {train} (split 'train'): missing column(s) ['sentence'], unexpected column(s) ['text']",
    )


def test_wrong_label_value(tiny_bert, sst2_rows, good, tmp_path) -> None:
    rows = [dict(r) for r in sst2_rows]
    rows[4]["label"] = 7
    train = _write(tmp_path / "train.jsonl", [json.dumps(r) for r in rows])
    _assert_clean_failure(
        _train(tiny_bert, train, good, tmp_path / "run"),
        f"task glue/sst2: {train} (split 'train'): unexpected label value(s) [7] in column 'label' (first at line 5)",
    )


def test_empty_split(tiny_bert, sst2_rows, tmp_path) -> None:
    train = _write(tmp_path / "train.jsonl", [json.dumps(r) for r in sst2_rows])
    empty = tmp_path / "validation.jsonl"
    empty.write_text("\n", encoding="utf-8")
    _assert_clean_failure(
        _train(tiny_bert, train, empty, tmp_path / "run"),
        f"task glue/sst2: split 'validation' is empty: {empty} has no records",
    )


def test_field_missing_in_one_record(tiny_bert, sst2_rows, good, tmp_path) -> None:
    rows = [dict(r) for r in sst2_rows]
    del rows[9]["sentence"]
    train = _write(tmp_path / "train.jsonl", [json.dumps(r) for r in rows])
    _assert_clean_failure(
        _train(tiny_bert, train, good, tmp_path / "run"),
        f"task glue/sst2: {train} (split 'train'): line 10: field 'sentence' has no value",
    )
