"""The kernel benchmark on tiny shapes: strategies checked against dense, report rows and ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import moc_cli.tuner
from benchmarks.kernels import STRATEGIES, Shape, check_agreement, kernel_report, run_kernel_benchmark
from moc_cli.tuner import DEFAULT_KERNEL_POLICY, KernelPolicy

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
    # the strategies pass their own policies: the tuner's default is left as it was
    assert KernelPolicy() == DEFAULT_KERNEL_POLICY and DEFAULT_KERNEL_POLICY.grouped_min_width == 160


def test_a_wrong_strategy_fails_the_agreement_check(monkeypatch: pytest.MonkeyPatch) -> None:
    real = moc_cli.tuner.dense_mixture
    monkeypatch.setattr(moc_cli.tuner, "sparse_mixture", lambda *x, **_policy: real(*x) * 1.01)
    with pytest.raises(AssertionError, match="sparse \\(default rule\\)"):
        check_agreement(SHAPES[1])


def test_the_forced_strategies_take_the_formulation_they_name(monkeypatch: pytest.MonkeyPatch) -> None:
    policies: dict[str, KernelPolicy | None] = {}
    real = moc_cli.tuner.sparse_mixture

    def recording(*args, policy=None):  # type: ignore[no-untyped-def]
        policies.setdefault(current, policy)
        return real(*args) if policy is None else real(*args, policy=policy)

    monkeypatch.setattr(moc_cli.tuner, "sparse_mixture", recording)
    from benchmarks.kernels import _strategy

    for current in ("sparse (default rule)", "sparse, all rows", "sparse, per expert"):
        _strategy(current)(*_tiny_inputs())
    assert policies["sparse (default rule)"] is None  # the tuner's own default
    all_rows, per_expert = policies["sparse, all rows"], policies["sparse, per expert"]
    assert all_rows is not None and not all_rows.per_expert("cpu", 1000, 16)
    assert (
        per_expert is not None and per_expert.per_expert("cuda", 1, 1) and per_expert.per_expert("cpu", 1, 1)
    )


def _tiny_inputs() -> tuple:
    from benchmarks.kernels import _inputs

    u, a, bt, idx, coef = _inputs(SHAPES[0])
    return u, a, bt, idx, coef, 2.0


def test_the_report_prints_the_default_policy_and_its_no_grad_choice() -> None:
    record = json.loads((Path(__file__).resolve().parents[2] / "benchmarks/results/kernels.json").read_text())
    text = kernel_report(record)
    assert "The default rule computes routed columns per expert when E·r ≥ 160 on cpu, else through" in text
    # SmolLM2's pool (E·r = 480) at 16x128 tokens: sparse without grad on the CPU; decoding: dense
    no_grad = text[text.index("No-grad forward:") :]
    assert "| SmolLM2-135M, 16x128 | 2048 | 576 | 30 | 16 |" in no_grad
    rows = {line.split(" | ")[0][2:]: line for line in no_grad.splitlines() if line.startswith("| ")}
    assert rows["SmolLM2-135M, 16x128"].endswith(" sparse |")
    assert rows["SmolLM2-135M, decoding 8 sequences"].endswith(" dense |")
