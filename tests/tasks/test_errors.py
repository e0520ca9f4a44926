"""Data validation: every bad-input error names the task, file, split and the expectation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moc_cli.tasks import DataSource, TaskDataError, get_task


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_wrong_columns(tmp_path: Path):
    f = write_jsonl(tmp_path / "train.jsonl", [{"text": "good film", "label": 1}])
    with pytest.raises(TaskDataError) as err:
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))
    assert str(err.value) == (
        f"task glue/sst2: {f} (split 'train'): missing column(s) ['sentence'], unexpected column(s) ['text']; "
        "expected columns: sentence, label (optional: idx)"
    )


def test_missing_pair_column(tmp_path: Path):
    f = write_jsonl(tmp_path / "validation.jsonl", [{"sentence1": "a", "label": 0, "idx": 0}])
    with pytest.raises(
        TaskDataError,
        match=r"missing column\(s\) \['sentence2'\]; expected columns: sentence1, sentence2, label",
    ):
        get_task("glue/mrpc").load(DataSource(path=str(tmp_path)))
    assert f.exists()


def test_unexpected_label_values(tmp_path: Path):
    f = write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 1}, {"sentence": "b", "label": 2}])
    with pytest.raises(TaskDataError) as err:
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))
    assert str(err.value) == (
        f"task glue/sst2: {f} (split 'train'): unexpected label value(s) [2] in column 'label' (first at line 2); "
        "expected 0=negative, 1=positive (label names or class indices)"
    )


def test_unlabelled_rows_only_in_test_splits(tmp_path: Path):
    write_jsonl(tmp_path / "validation.jsonl", [{"sentence": "a", "label": -1}])
    write_jsonl(tmp_path / "test.jsonl", [{"sentence": "b", "label": -1}])
    with pytest.raises(
        TaskDataError,
        match=r"\(split 'validation'\): unexpected label value\(s\) \[-1\].*"
        r"; -1 \(unlabelled\) is allowed only in test splits$",
    ):
        get_task("glue/cola").load(DataSource(path=str(tmp_path)))
    (tmp_path / "validation.jsonl").unlink()
    raw = get_task("glue/cola").load(DataSource(path=str(tmp_path)))
    assert raw["test"]["label"] == [-1]


def test_label_names_and_booleans_map_to_indices(tmp_path: Path):
    write_jsonl(
        tmp_path / "train.jsonl",
        [{"sentence": "a", "label": "positive"}, {"sentence": "b", "label": "Negative"}],
    )
    assert get_task("glue/sst2").load(DataSource(path=str(tmp_path)))["train"]["label"] == [1, 0]
    write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"question": "q", "passage": "p", "idx": 0, "label": True},
            {"question": "q", "passage": "p", "idx": 1, "label": False},
        ],
    )
    assert get_task("superglue/boolq").load(DataSource(path=str(tmp_path)))["train"]["label"] == [1, 0]
    write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": "great"}])
    with pytest.raises(TaskDataError, match=r"unexpected label value\(s\) \['great'\]"):
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))


def test_null_text_names_the_row(tmp_path: Path):
    write_jsonl(tmp_path / "train.jsonl", [{"sentence": "fine", "label": 1}, {"sentence": None, "label": 0}])
    with pytest.raises(
        TaskDataError,
        match=r"\(split 'train'\): line 2: field 'sentence' has no value; expected a string in every record",
    ):
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))


def test_record_missing_a_field_names_file_line_and_field(tmp_path: Path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"sentence": "a", "label": 1}\n\n{"label": 0}\n{"sentence": "c", "label": 1}\n')
    with pytest.raises(TaskDataError) as err:
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))
    assert str(err.value) == (
        f"task glue/sst2: {f} (split 'train'): line 3: field 'sentence' has no value; expected a string in every record"
    )
    f.write_text('{"sentence": "a", "label": 1}\n{"sentence": 5, "label": 1}\n')
    with pytest.raises(
        TaskDataError,
        match=r"line 2: field 'sentence' has int 5 where earlier records have str; every record needs the same type per field",
    ):
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))
    f.unlink()
    (tmp_path / "train.json").write_text(
        json.dumps([{"sentence": "a", "label": 1}, {"sentence": "b", "label": 3}])
    )
    with pytest.raises(
        TaskDataError, match=r"unexpected label value\(s\) \[3\] in column 'label' \(first at record 1\)"
    ):
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))


def test_regression_labels_must_be_numbers(tmp_path: Path):
    write_jsonl(tmp_path / "train.jsonl", [{"sentence1": "a", "sentence2": "b", "label": "high"}])
    with pytest.raises(
        TaskDataError,
        match=r"column 'label' has non-numeric value\(s\) \[\"'high'\"\] \(first at line 1\); expected float scores",
    ):
        get_task("glue/stsb").load(DataSource(path=str(tmp_path)))


def test_malformed_json_line_names_file_and_line(tmp_path: Path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"sentence": "ok", "label": 1}\n{"sentence": "broken", "label": \n')
    with pytest.raises(TaskDataError) as err:
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))
    assert str(err.value).startswith(
        f"task glue/sst2: {f}: line 2: invalid JSON (Expecting value, column 33)"
    )
    f.write_text('{"sentence": "ok", "label": 1}\n[1, 2]\n')
    with pytest.raises(TaskDataError, match=r"line 2: got a JSON list, each line must be one JSON object"):
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))


def test_empty_split_names_split_and_file(tmp_path: Path):
    write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 1}])
    f = tmp_path / "validation.jsonl"
    f.write_text("\n")
    with pytest.raises(TaskDataError) as err:
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))
    assert str(err.value) == f"task glue/sst2: split 'validation' is empty: {f} has no records"


def test_missing_folder_contents_and_unknown_split(tmp_path: Path):
    with pytest.raises(
        TaskDataError,
        match=r"no data files in .*; expected files named <split>\.<ext> with split in "
        r"\['train', 'validation', 'test'\]",
    ):
        get_task("glue/sst2").load(DataSource(path=str(tmp_path)))
    with pytest.raises(TaskDataError, match=r"data\.files has unknown split\(s\) \['dev'\]"):
        get_task("glue/sst2").load(DataSource(files={"dev": str(tmp_path / "x.jsonl")}))
    with pytest.raises(TaskDataError, match=r"data file for split 'train' not found: .*nope\.jsonl"):
        get_task("glue/sst2").load(DataSource(files={"train": str(tmp_path / "nope.jsonl")}))
    with pytest.raises(TaskDataError, match=r"data\.path './nowhere' does not exist"):
        get_task("glue/sst2").load(DataSource(path="./nowhere"))


def test_csv_and_aliases_load_like_jsonl(tmp_path: Path):
    (tmp_path / "train.csv").write_text("sentence,label,idx\ngood,1,0\nbad,0,1\n")
    write_jsonl(tmp_path / "dev.jsonl", [{"sentence": "fine", "label": 1, "idx": 0}])
    raw = get_task("glue/sst2").load(DataSource(path=str(tmp_path), max_train_samples=1))
    assert raw["train"]["sentence"] == ["good"] and raw["validation"]["label"] == [1]


def test_hub_failure_points_to_local_data():
    import datasets

    if not datasets.config.HF_DATASETS_OFFLINE:
        pytest.skip("needs HF_DATASETS_OFFLINE=1 set before datasets is imported")
    with pytest.raises(
        TaskDataError,
        match=r"could not load Hub dataset 'nyu-mll/glue' \(config 'cola'\).*"
        r"set data\.path to a local folder",
    ):
        get_task("glue/cola").load(DataSource())
    with pytest.raises(TaskDataError, match=r"could not load Hub dataset 'nyu-mll/glue' \(config 'cola'\)"):
        get_task("glue/cola").load(DataSource(path="nyu-mll/glue"))
    with pytest.raises(
        TaskDataError, match=r"could not load Hub dataset 'someone/cola-copy' \(config None\)"
    ):
        get_task("glue/cola").load(DataSource(path="someone/cola-copy"))
