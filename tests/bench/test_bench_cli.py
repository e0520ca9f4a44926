"""`moc bench` through the project's Typer app: help, and input errors exit 2 naming the option."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from moc_cli.cli.app import app

ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1"}


def test_bench_help_lists_both_suites() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"], env=ENV)
    assert result.exit_code == 0
    assert "efficiency" in result.stdout and "accuracy" in result.stdout
    assert "moc bench efficiency --model minilm --seq-len 128 --seq-len 512" in result.stdout


def test_unknown_efficiency_method_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "efficiency", "--method", "nope", "--output-dir", str(tmp_path)], env=ENV
    )
    assert result.exit_code == 2
    assert "error: --method 'nope' is unknown; choose from moc-ffn" in result.stderr
    assert not (tmp_path / "efficiency.json").exists()


def test_rss_only_without_a_stored_run_exits_2_naming_the_fix(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "efficiency", "--rss-only", "--output-dir", str(tmp_path)], env=ENV
    )
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: --rss-only: {tmp_path / 'efficiency.json'} has no run of --model minilm --batch-size 16 "
        "--seq-len 128; run the benchmark without --rss-only first\n"
    )
    assert not (tmp_path / "efficiency.json").exists()


def test_unknown_accuracy_grid_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "accuracy", "--grid", "huge", "--output-dir", str(tmp_path)], env=ENV
    )
    assert result.exit_code == 2
    assert "error: --grid 'huge' is unknown; choose from main, ablations" in result.stderr


def test_efficiency_stores_the_run_and_writes_plain_tables(tiny_bert_dir: Path, tmp_path: Path) -> None:
    args = ["bench", "efficiency", "--model", str(tiny_bert_dir), "--method", "moc-ffn", "--batch-size", "2",
            "--seq-len", "8", "--steps", "1", "--warmup", "0", "--rounds", "1", "--threads", "1", "--no-rss",
            "--output-dir", str(tmp_path)]  # fmt: skip
    study_report = tmp_path / "efficiency.md"  # what benchmarks/efficiency.py wrote there before
    study_report.write_text("# the study report\n")
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"wrote {tmp_path / 'efficiency_table.md'}"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "efficiency.json",
        "efficiency.md",
        "efficiency_table.csv",
        "efficiency_table.md",
    ]  # the study's chart and targets come from benchmarks/efficiency.py
    assert study_report.read_text() == "# the study report\n"  # never overwritten by moc bench
    text = (tmp_path / "efficiency_table.md").read_text()
    assert text.startswith("# Efficiency measurements\n") and "| `moc-ffn` |" in text
    # the command as recorded (under CliRunner there is no `moc bench ...` in sys.argv to copy)
    assert "- command: `moc bench efficiency`\n" in text
