"""The efficiency harness on a tiny model: positive figures, exact ratios, deterministic saved bytes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import moc_cli  # noqa: F401  (registers MoC and MoLEx)
from benchmarks.report import write_efficiency_report
from moc_cli.bench import EfficiencyError, run_efficiency_benchmark, with_ratios
from moc_cli.bench.efficiency import run_efficiency
from moc_cli.bench.rss import measure_rss_subprocess
from moc_cli.bench.store import merge_runs
from moc_cli.bench.timing import paired_time_ratio, timing_order
from moc_cli.bench.workload import build_model, make_batch, resolve_benchmark_model, saved_bytes_of_step

torch.set_num_threads(1)
METHODS = ["control", "moc-both-shared", "molex"]


@pytest.fixture(scope="module")
def run(tiny_bert_dir: Path) -> dict:
    return run_efficiency(
        str(tiny_bert_dir),
        METHODS,
        batch_size=2,
        seq_len=8,
        steps=1,
        warmup=1,
        rounds=2,
        threads=1,
        measure_rss=False,
        log=lambda _msg: None,
    )


def test_every_figure_is_positive_and_control_ratio_is_one(run: dict) -> None:
    assert [m["method"] for m in run["methods"]] == METHODS
    for m in run["methods"]:
        assert m["trainable_params"] > 0, m["method"]
        assert m["saved_bytes"] > 0, m["method"]
        assert len(m["step_times"]) == 2 and all(t > 0 for t in m["step_times"]), m["method"]
    rows = {r["method"]: r for r in with_ratios(run)}
    control = rows["control"]
    for key in ("params_vs_control", "saved_vs_control", "time_vs_control"):
        assert control[key] == 1.0
    assert control["peak_vs_control"] is None  # peak RSS not measured in this run
    assert rows["moc-both-shared"]["same_site_control"] is None  # control-both was not measured
    assert rows["molex"]["saved_vs_control"] == rows["molex"]["saved_bytes"] / control["saved_bytes"]


def test_each_moc_variant_is_timed_right_after_its_same_site_control() -> None:
    from moc_cli.bench import METHOD_NAMES

    assert timing_order(METHOD_NAMES) == [
        "control", "moc-ffn", "control-attn", "moc-attn",
        "control-both", "moc-both-separate", "moc-both-shared",
        "lora-qv", "lora-all", "dora", "ia3", "full", "molex",
    ]  # fmt: skip
    # Without its Control a variant keeps its place; nothing is added or lost.
    assert timing_order(["moc-attn", "control", "moc-ffn", "ia3"]) == [
        "moc-attn",
        "control",
        "moc-ffn",
        "ia3",
    ]


def test_time_ratios_pair_the_methods_round_by_round() -> None:
    # Round 2 ran on a machine twice as slow: pooled medians would mix the rounds, the paired
    # ratio sees 1.1 in both.
    control = {"step_times": [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]}
    moc = {"step_times": [1.1, 1.0, 1.2, 2.2, 2.2, 2.3]}
    assert paired_time_ratio(moc, control, rounds=2) == pytest.approx(1.1)
    assert paired_time_ratio(moc, control, rounds=1) == pytest.approx(1.7 / 1.5)
    assert paired_time_ratio({"step_times": []}, control, rounds=2) is None


def test_rounds_alternate_direction(tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import moc_cli.bench.timing as timing
    import moc_cli.bench.workload as workload

    built: list[str] = []
    real_build = workload.build_model

    def recording_build(bench_model, method, seed=0):  # type: ignore[no-untyped-def]
        built.append(method)
        return real_build(bench_model, method, seed)

    monkeypatch.setattr(workload, "build_model", recording_build)
    timing.measure_in_process(
        resolve_benchmark_model(str(tiny_bert_dir)), ["moc-ffn", "control", "ia3"],
        batch_size=1, seq_len=4, steps=1, warmup=0, rounds=3, log=lambda _m: None,
    )  # fmt: skip
    assert built == ["control", "moc-ffn", "ia3", "ia3", "moc-ffn", "control", "control", "moc-ffn", "ia3"]


def test_a_control_and_its_moc_variants_alternate_step_by_step(
    tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CPU the timed steps of a Control and its same-site MoC variants alternate one by one
    (ABBA), so a drift of the machine's speed reaches both alike; other methods run alone."""
    import moc_cli.bench.timing as timing
    import moc_cli.bench.workload as workload

    names: dict[int, str] = {}
    stepped: list[str] = []
    real_build, real_step = workload.build_model, timing.train_step

    def recording_build(bench_model, method, seed=0):  # type: ignore[no-untyped-def]
        model = real_build(bench_model, method, seed)
        names[id(model)] = method
        return model

    def recording_step(model, optimizer, batch):  # type: ignore[no-untyped-def]
        stepped.append(names[id(model)])
        return real_step(model, optimizer, batch)

    monkeypatch.setattr(workload, "build_model", recording_build)
    monkeypatch.setattr(timing, "train_step", recording_step)
    results = timing.measure_in_process(
        resolve_benchmark_model(str(tiny_bert_dir)), ["moc-ffn", "control", "ia3"],
        batch_size=1, seq_len=4, steps=3, warmup=1, rounds=2, log=lambda _m: None,
    )  # fmt: skip
    warm = ["control", "moc-ffn"]  # one warm-up step each, as they are built
    assert stepped == [
        *warm, "control", "moc-ffn", "moc-ffn", "control", "control", "moc-ffn",
        "ia3", "ia3", "ia3", "ia3",
        "ia3", "ia3", "ia3", "ia3",  # round 2 runs backwards
        *warm[::-1], "moc-ffn", "control", "control", "moc-ffn", "moc-ffn", "control",
    ]  # fmt: skip
    assert [len(results[m].step_times) for m in ("control", "moc-ffn", "ia3")] == [6, 6, 6]


def test_trainable_parameter_counts_match_the_method_definitions(run: dict) -> None:
    counts = {m["method"]: m["trainable_params"] for m in run["methods"]}
    d, layers, r, head = 32, 2, 16, 32 * 2 + 2
    assert counts["control"] == layers * 2 * d * r + head  # one FFN control per layer
    assert counts["molex"] == layers * d * layers + head  # one Linear(d, L) router per layer


@pytest.mark.slow  # a fresh interpreter importing torch/transformers/peft: 10-40 s on a shared machine
def test_peak_rss_probe_in_a_fresh_process(tiny_bert_dir: Path) -> None:
    peak = measure_rss_subprocess(str(tiny_bert_dir), "control", batch_size=2, seq_len=8, steps=1, threads=1)
    assert peak > 0


def test_saved_bytes_are_deterministic(tiny_bert_dir: Path) -> None:
    bench_model = resolve_benchmark_model(str(tiny_bert_dir))
    figures = []
    for _ in range(2):
        model = build_model(bench_model, "moc-both-shared")
        batch = make_batch(model, bench_model.kind, 2, 8)
        figures.append(saved_bytes_of_step(model, batch))
    assert figures[0] == figures[1] > 0


def test_unknown_method_names_the_option(tiny_bert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EfficiencyError, match="--method 'lora-everything' is unknown; choose from moc-ffn"):
        run_efficiency_benchmark(
            [str(tiny_bert_dir)], ["lora-everything"], 2, [8], 1, 0, 1, 1, False, tmp_path, "cmd"
        )


def test_the_study_report_is_generated_and_runs_merge(tiny_bert_dir: Path, tmp_path: Path) -> None:
    report = run_efficiency_benchmark(
        [str(tiny_bert_dir)],
        ["control", "moc-ffn"],
        batch_size=2,
        seq_lens=[8],
        steps=1,
        warmup=0,
        rounds=1,
        threads=1,
        measure_rss=False,
        output_dir=tmp_path,
        command="moc bench efficiency --test",
        log=lambda _msg: None,
        write_report=write_efficiency_report,
    )
    text = report.read_text()
    assert "`moc bench efficiency --test`" in text
    assert "| `control` |" in text and "| `moc-ffn` |" in text
    assert "`moc-ffn` vs `control`: saved bytes" in text
    assert (tmp_path / "efficiency.png").stat().st_size > 0
    stored = json.loads((tmp_path / "efficiency.json").read_text())["runs"]
    assert [(r["batch_size"], r["seq_len"]) for r in stored] == [(2, 8)]

    older = {**stored[0], "command": "older"}
    other = {**stored[0], "seq_len": 16, "command": "older"}
    untimed = {**stored[0], "steps": 0, "command": "untimed"}
    # A timed run supersedes the stored timed and memory-only runs of its configuration.
    merged = merge_runs([older, other, untimed], stored)
    assert [(r["seq_len"], r["steps"], r["command"]) for r in merged] == [
        (8, 1, "moc bench efficiency --test"),
        (16, 1, "older"),
    ]
    # A memory-only run replaces only a memory-only run: the timed figures stay.
    newer_untimed = {**untimed, "command": "newer untimed"}
    merged = merge_runs([untimed, *stored], [newer_untimed])
    assert [(r["steps"], r["command"]) for r in merged] == [
        (0, "newer untimed"),
        (1, "moc bench efficiency --test"),
    ]


def _tiny_bench(model_dir: Path, output_dir: Path) -> Callable[..., Path]:
    """One-step efficiency runs of a tiny model at batch 2 x 8 tokens, stored in `output_dir`, with the
    study report."""

    def bench(**kw: object) -> Path:
        args = dict(batch_size=2, seq_lens=[8], steps=1, warmup=0, rounds=1, threads=1, measure_rss=False)
        return run_efficiency_benchmark(
            [str(model_dir)],
            log=lambda _m: None,
            output_dir=output_dir,
            write_report=write_efficiency_report,
            **{**args, **kw},
        )

    return bench


@pytest.mark.parametrize("flag", ["--rss-only", "--saved-only"])
def test_measuring_one_figure_again_needs_a_stored_run(
    flag: str, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    option = {"--rss-only": "rss_only", "--saved-only": "saved_only"}[flag]
    with pytest.raises(EfficiencyError) as err:
        _tiny_bench(tiny_bert_dir, tmp_path)(methods=None, command="again", **{option: True})
    assert str(err.value) == (
        f"{flag}: {tmp_path / 'efficiency.json'} has no run of --model {tiny_bert_dir} --batch-size 2 "
        f"--seq-len 8; run the benchmark without {flag} first"
    )


def test_rss_only_fills_peak_memory_into_the_stored_run_and_keeps_its_timings(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import moc_cli.bench.efficiency as efficiency

    bench = _tiny_bench(tiny_bert_dir, tmp_path)
    bench(methods=["control", "moc-ffn"], command="timed")
    timed = json.loads((tmp_path / "efficiency.json").read_text())["runs"][0]
    with pytest.raises(EfficiencyError) as err:
        bench(methods=["lora-all"], command="rss", rss_only=True)
    assert str(err.value) == (
        f"--rss-only: the stored run of --model {tiny_bert_dir} --batch-size 2 --seq-len 8 has no method "
        "'lora-all'; it has control, moc-ffn"
    )
    # The probe itself (a fresh interpreter) is covered by the slow test above.
    probed: list[str] = []
    monkeypatch.setattr(
        efficiency, "measure_rss_subprocess", lambda _model, method, *_a: probed.append(method) or 3 * 2**20
    )
    report = bench(methods=["moc-ffn"], command="rss", rss_only=True)
    (run,) = json.loads((tmp_path / "efficiency.json").read_text())["runs"]
    assert probed == ["moc-ffn"]
    rows = {m["method"]: m for m in run["methods"]}
    assert rows["moc-ffn"]["peak_bytes"] == 3 * 2**20 and rows["control"]["peak_bytes"] is None
    assert [m["step_times"] for m in run["methods"]] == [m["step_times"] for m in timed["methods"]]
    assert (run["command"], run["rss_command"]) == ("timed", "rss")
    assert "- command: `timed`; peak RSS measured afterwards by `rss`" in report.read_text()


def test_saved_only_measures_the_saved_bytes_again_and_keeps_the_timings(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    bench = _tiny_bench(tiny_bert_dir, tmp_path)
    bench(methods=["control", "moc-ffn"], command="timed")
    store = tmp_path / "efficiency.json"
    timed = json.loads(store.read_text())["runs"][0]
    stale = json.loads(store.read_text())
    for row in stale["runs"][0]["methods"]:
        row["saved_bytes"] = 1  # as if measured by an older profiler
    store.write_text(json.dumps(stale))
    with pytest.raises(EfficiencyError) as err:
        bench(methods=["lora-all"], command="saved", saved_only=True, rss_only=True)
    assert str(err.value).startswith("--rss-only --saved-only: the stored run of --model")
    report = bench(methods=["moc-ffn"], command="saved", saved_only=True)
    (run,) = json.loads(store.read_text())["runs"]
    rows = {m["method"]: m for m in run["methods"]}
    # the measurement is deterministic: the timed run's figure again; control was not asked for
    assert rows["moc-ffn"]["saved_bytes"] == timed["methods"][1]["saved_bytes"] > 1
    assert rows["control"]["saved_bytes"] == 1
    assert [m["step_times"] for m in run["methods"]] == [m["step_times"] for m in timed["methods"]]
    assert (run["command"], run["saved_command"]) == ("timed", "saved")
    assert "- command: `timed`; saved bytes measured again by `saved`" in report.read_text()


def test_by_default_the_plain_tables_of_every_stored_run_are_written(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    md = run_efficiency_benchmark(
        [str(tiny_bert_dir)], ["moc-ffn"], 2, [8], 1, 0, 1, 1, False, tmp_path, "moc bench efficiency --t",
        log=lambda _m: None,
    )  # fmt: skip
    assert md == tmp_path / "efficiency_table.md" and not (tmp_path / "efficiency.png").exists()
    text = md.read_text()
    assert text.startswith("# Efficiency measurements\n")
    assert "`python benchmarks/efficiency.py --report-only --output-dir DIR`" in text
    (run,) = json.loads((tmp_path / "efficiency.json").read_text())["runs"]
    rows = {r["method"]: r for r in with_ratios(run)}
    assert [r["method"] for r in run["methods"]] == ["control", "moc-ffn"]  # Control joins as reference
    moc = rows["moc-ffn"]
    assert (
        f"| `moc-ffn` | {moc['trainable_params']:,} | {moc['saved_bytes'] / 2**20:.1f} "
        f"| {moc['saved_vs_control']:.3f} | – | – | {moc['median_step_s']:.3f} | {moc['time_vs_control']:.3f} "
        f"| control | {moc['saved_vs_same_site']:.3f} | {moc['time_vs_same_site']:.3f} |"
    ) in text
    lines = (tmp_path / "efficiency_table.csv").read_text().splitlines()
    assert lines[0].startswith("model,model_type,batch_size,seq_len,steps,rounds,device,date_utc,method,")
    assert [line.split(",")[8] for line in lines[1:]] == ["control", "moc-ffn"]
