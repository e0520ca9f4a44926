"""The kernel benchmark on tiny shapes: strategies checked against dense, report rows and ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moc_cli.bench.kernels import STRATEGIES, Shape, check_agreement, run_kernel_benchmark
from moc_cli.tuner import functional

SHAPES = (
    Shape("narrow", 64, 16, 3, 4),
    Shape("wide", 64, 16, 20, 8),
    Shape("wide, two experts", 64, 16, 20, 8, routing="two experts"),
    Shape("wide, long tail", 64, 16, 20, 8, routing="long tail"),
)


def test_writes_every_strategy_with_ratios_to_all_rows(tmp_path: Path) -> None:
    lines: list[str] = []
    md = run_kernel_benchmark(
        SHAPES, repeats=1, rounds=1, threads=1, output_dir=tmp_path, command="cmd", log=lines.append
    )
    record = json.loads((tmp_path / "kernels.json").read_text(encoding="utf-8"))
    assert [row["shape"]["label"] for row in record["rows"]] == [
        "narrow",
        "wide",
        "wide, two experts",
        "wide, long tail",
    ]
    for row in record["rows"]:
        assert set(row["ms"]) == set(STRATEGIES)
        assert all(v[kind] > 0 for v in row["ms"].values() for kind in ("train", "infer"))
    text = md.read_text(encoding="utf-8")
    assert "- command: `cmd`" in text
    assert text.count("| narrow | 64 | 16 | 3 | 4 | ") == 2  # forward+backward and no-grad tables
    wide = record["rows"][1]["ms"]
    ratio = wide["dense"]["train"] / wide["sparse, all rows"]["train"]
    assert f"{wide['dense']['train']:.1f} | {ratio:.2f} |" in text
    assert len(lines) == 4
    # the no-grad table names what expert_compute="auto" runs: dense for pools this small
    no_grad = text[text.index("No-grad forward:") :]
    assert no_grad.count(" | dense |\n") == 4 and "| default ÷ control | `auto` uses |" in no_grad
    # MoC's overhead at the site: the default rule's time over the local column's alone
    overhead = wide["sparse (default rule)"]["train"] / wide["control"]["train"]
    assert f"{wide['control']['train'] / wide['sparse, all rows']['train']:.2f} | {overhead:.2f} |\n" in text
    # the module's settings are restored after each strategy
    assert functional.GROUPED_MIN_WIDTH == 160


def test_a_wrong_strategy_fails_the_agreement_check(monkeypatch: pytest.MonkeyPatch) -> None:
    real = functional.dense_mixture
    monkeypatch.setattr(functional, "sparse_mixture", lambda *x: real(*x) * 1.01)
    with pytest.raises(AssertionError, match="sparse \\(default rule\\)"):
        check_agreement(SHAPES[1])
