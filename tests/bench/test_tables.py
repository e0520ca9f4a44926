"""The plain tables `moc bench accuracy` writes: every stored cell and the mean over seeds, no verdicts;
its CSV is the one the study report writes too."""

from __future__ import annotations

from pathlib import Path

from test_accuracy_helpers import record

from moc_cli.bench import write_accuracy_tables


def test_accuracy_tables_list_every_cell_and_the_mean_over_seeds(tmp_path: Path) -> None:
    cells = [
        record("moc", "glue/rte", seed, 1e-3, value) for seed, value in ((0, 0.80), (1, 0.82), (2, None))
    ]
    smoke = {**record("control", "glue/rte", 0, 1e-3, 0.5), "max_steps": 8}
    smoke["key"] += "|cap=8"
    md = write_accuracy_tables([smoke, *cells], tmp_path)
    assert md == tmp_path / "accuracy_table.md"
    lines = md.read_text().splitlines()
    assert lines[0] == "# Accuracy cells"
    # mean ± std over the two seeds that trained; the diverged one is counted apart
    assert "| glue/rte | moc | 0.001 | accuracy | 75.0 | 81.0 ± 1.4 | 3 | 1 | – |" in lines
    assert "| glue/rte | control | 0.001 | accuracy | 75.0 | 50.0 | 1 | 0 | 8 |" in lines
    key = cells[2]["key"]
    assert (
        f"| glue/rte | moc | 0.001 | 2 | accuracy | diverged | 10 | 60 | cuda (NVIDIA H200) | `{key}` |"
        in lines
    )
    csv_lines = (tmp_path / "accuracy_table.csv").read_text().splitlines()
    assert csv_lines[0].startswith(
        "key,task,label,seed,learning_rate,precision,model_tag,max_steps,metric,value"
    )
    assert [line.split(",")[2] for line in csv_lines[1:]] == ["control", "moc", "moc", "moc"]


def test_accuracy_tables_of_an_empty_store_say_so(tmp_path: Path) -> None:
    text = write_accuracy_tables([], tmp_path).read_text()
    assert text.endswith("## Mean over seeds\n\n(no cell has run)\n")
