"""Accuracy study statistics and report: paired t-intervals with exact numbers, verdicts read from the
interval, tasks that do not train left out of the averages, and the tables and paragraph generated
from stored cells."""

from __future__ import annotations

import math

import pytest
from test_accuracy_helpers import CTX, fake_value, record

from benchmarks.report import (
    PairedDifference,
    accuracy_conclusion,
    accuracy_markdown,
    accuracy_readme_block,
    build_study,
    paired_difference,
    seed_average,
)
from moc_cli.bench import METHODS
from moc_cli.bench.study import ablation_cells, main_cells, sweep_cells

RATES = {m: 1e-3 for m in METHODS} | {"full": 1e-4}


def test_paired_t_interval_exact_numbers() -> None:
    # differences 2, 3, 4: mean 3, sd 1, t(0.975, 2) = 4.302652729749462, half-width t / sqrt(3)
    diff = paired_difference({0: 3.0, 1: 5.0, 2: 7.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert diff == PairedDifference(3, 3.0, 0.5158622882496697, 5.48413771175033)
    assert diff.verdict == "ahead" and diff.text() == "+3.0 [+0.5, +5.5] (n=3)"
    # differences 1, -0.5, 2, 0.5, 1.5: mean 0.9, sd 0.9617692030835673, t(0.975, 4) = 2.7764451051977934
    a = {0: 11.0, 1: 9.5, 2: 12.0, 3: 10.5, 4: 11.5}
    diff = paired_difference(a, dict.fromkeys(range(5), 10.0))
    assert diff.n == 5 and diff.mean == pytest.approx(0.9, abs=1e-15)
    assert diff.low == pytest.approx(-0.29419419404999025, abs=1e-12)
    assert diff.high == pytest.approx(2.09419419404999, abs=1e-12)
    assert diff.verdict == "tied" and diff.text() == "+0.9 [-0.3, +2.1] (n=5)"
    behind = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 3.0, 1: 5.0, 2: 7.0})
    assert behind == PairedDifference(3, -3.0, -5.48413771175033, -0.5158622882496697)
    assert behind.verdict == "behind"


def test_only_seeds_both_sides_have_are_paired() -> None:
    assert paired_difference({0: 1.0}, {1: 1.0}) is None
    single = paired_difference({0: 2.0, 5: 9.0}, {0: 1.5, 1: 0.0})
    assert single == PairedDifference(1, 0.5, None, None)
    assert single.verdict == "1 seed, no interval" and single.text() == "+0.5 (n=1)"
    same = paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})  # constant difference: zero width
    assert same == PairedDifference(2, 1.0, 1.0, 1.0) and same.verdict == "ahead"
    assert math.isclose(paired_difference({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0}).high, 0.0)
    assert paired_difference({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0}).verdict == "tied"


def test_seed_average_keeps_seeds_present_on_every_task() -> None:
    per_task = {"a": {0: 1.0, 1: 2.0, 2: 3.0}, "b": {0: 3.0, 2: 5.0}}
    assert seed_average(per_task, ["a", "b"]) == {0: 2.0, 2: 4.0}
    assert seed_average(per_task, []) == {}


def full_study(diagnostics: bool = False) -> list[dict]:
    """Every cell of the sweep, main grid and ablations, scored by the fake runner's formula."""
    records = {}
    for cell in sweep_cells(CTX) + main_cells(CTX, RATES) + ablation_cells(CTX, 1e-3):
        r = record(cell.label, cell.task, cell.seed, cell.learning_rate, fake_value(cell))
        r["key"] = cell.key
        if diagnostics and cell.label == "moc":
            r["diagnostics"] = {
                "entropy": 1.5,
                "entropy_max": math.log(6),
                "train_trajectory": [[1, math.log(6), 1.0, 1.0], [9, 1.6, 1.0, 1.0]],
                "expert_utilization": 1.0,
                "self_share": 0.25,
                "top_expert_share": 0.3,
                "router_std": {"block": 0.021},
            }
        records[r["key"]] = r
    return list(records.values())


def test_tasks_below_their_bar_leave_the_averages() -> None:
    study = build_study(full_study())
    assert study.rates == RATES
    assert study.done == {"sweep": 69, "main": 192, "ablations": 78}
    assert study.bar("glue/cola") == 25.0 and study.bar("glue/sst2") == 85.0
    assert study.bar("glue/rte") == pytest.approx(80.0, abs=1e-12)
    # COPA's best (full, 0.76 + 0.02 + seed noise) stays under majority 0.75 + 0.05
    assert study.untrained_tasks() == ["superglue/copa"]
    assert len(study.trained_tasks()) == 7


def test_report_tables_and_paragraph_come_from_the_cells() -> None:
    text = accuracy_markdown(full_study(diagnostics=True))
    lines = text.splitlines()
    # fake scores: moc = control + 1 point per seed, except seed 1 (+0.6): differences 1.1, 0.6, 1.1,
    # 1.1, 1.1 -> mean 1.0, sd 0.2236, t(0.975, 4) 2.776 -> half-width 0.28
    assert "| control | glue/rte | +1.0 [+0.7, +1.3] (n=5) | ahead |" in lines
    assert "| control | **average of the 7 trained tasks** | +1.0 [+0.7, +1.3] (n=5) | **ahead** |" in lines
    assert (
        "| lora-qv | superglue/copa (not trained: not in the average) | +0.5 [+0.2, +0.8] (n=5) | ahead |"
        in lines
    )
    assert (
        "| superglue/copa | 4 | yes | 75.0 | 80.0 (majority + 5) | 78.1 (full) | **no**: left out of the averages |"
        in lines
    )
    assert "| glue/cola | 4 | yes | 0.0 | 25.0 | 32.1 (full) | yes |" in lines
    row = next(line for line in lines if line.startswith("| **moc** | 0.001 |"))
    assert row.split(" | ")[2:4] == ["31.0 ± 0.2 (n=5)", "86.0 ± 0.2 (n=5)"]
    assert "| full | 0.0001 | 32.2 | 87.2 | 87.2 | 0.433 | **chosen** |" in lines
    assert "| moc | 0.01 | 29.1 | 84.1 | 84.1 | 0.340 |  |" in lines
    assert "| moc (reference) | 86.0 ± 0.2 (n=3) | 86.0 ± 0.2 (n=3) | 86.0 | – | – |" in lines
    assert "| moc | glue/rte | 1.00 → 0.84 | 1.00 | 0.25 | 0.30 | 0.0210 | – |" in lines
    paragraph = lines[lines.index("## What this shows") + 2]
    assert paragraph.startswith(
        "Full fine-tuning or LoRA clears its bar on 7 of 8 tasks; on superglue/copa the best of them stays "
        "below it (superglue/copa: 78.1 against a bar of 80.0), so those tasks cannot separate methods at this "
        "budget and are left out of the averages. Averaged over the trained tasks, MoC minus control is "
        "+1.0 [+0.7, +1.3] (n=5) points, so MoC is ahead of it; per task it is ahead on glue/cola, glue/mrpc, "
        "glue/rte, glue/sst2, superglue/cb, superglue/wsc and demo/sentiment, behind on none and tied on none."
    )
    assert (
        "So at this scale the study shows the gain over per-block Control that MoC is designed for."
        in paragraph
    )
    assert "(bert-L2-d32, so 2 experts per pool)" in paragraph
    assert "learning-rate sweep: 69 of 69; main grid: 192 of 192; ablations: 78 of 78" in text


def test_tied_and_partial_studies_say_so() -> None:
    records = [r for r in full_study() if not (r["label"] == "moc" and r["seed"] == 4)]
    for r in records:
        if r["label"] == "moc" and r["seed"] == 1 and r["grid"] == "main":
            r["value"] -= 0.02  # seed 1 now 1.4 points behind Control: the interval spans 0
    study = build_study(records)
    paragraph = accuracy_conclusion(study)
    assert paragraph.startswith(
        "Only 184 of the 192 main-grid cells have run, so every figure here may still move."
    )
    # differences 1.1, -1.4, 1.1, 1.1: mean 0.475, sd 1.25, t(0.975, 3) 3.182 -> half-width 1.99
    assert (
        "MoC minus control is +0.5 [-1.5, +2.5] (n=4) points, so the two are tied (the interval includes zero)"
        in paragraph
    )
    assert (
        "So the study does not show that MoC beats per-block Control at this scale, nor that it is worse: "
        "a difference smaller than the interval's half-width cannot be told from seed noise." in paragraph
    )


def test_pending_study_names_the_commands_and_hard_codes_no_result() -> None:
    expected = (
        "The converged study is pending: 0 of 69 learning-rate sweep cells and 0 of 192 main-grid cells have "
        "run, so nothing about MoC's accuracy is shown yet. Run the sweep, then the main grid and the ablations "
        "(on a GPU: `python benchmarks/accuracy.py --grid sweep --device cuda --workers 14`, then "
        "`python benchmarks/accuracy.py --grid main --grid ablations --device cuda --workers 14`; resumable, "
        "add `--merge` with an earlier `accuracy.jsonl` to continue it)."
    )
    assert accuracy_readme_block([]) == expected
    sweep_only = [r for r in full_study() if r["key"] in {c.key for c in sweep_cells(CTX)}][:10]
    assert accuracy_readme_block(sweep_only).startswith(
        "The converged study is pending: 10 of 69 learning-rate"
    )


def test_readme_block_holds_the_main_table_differences_and_paragraph() -> None:
    block = accuracy_readme_block(full_study())
    assert block.startswith("Packaged MiniLM-L6 (bert-L2-d32, fp32), budget per task in epochs")
    assert "| control | **average of the 7 trained tasks** | +1.0 [+0.7, +1.3] (n=5) | **ahead** |" in block
    assert "| majority class | – | 0.0 | 75.0 |" in block
    assert block.splitlines()[-1].startswith("Full fine-tuning or LoRA clears its bar on 7 of 8 tasks")


def test_capped_smoke_cells_never_enter_the_studys_tables() -> None:
    records = full_study()
    smoke = dict(records[0], key=records[0]["key"] + "|cap=8", max_steps=8, value=0.0)
    study = build_study([*records, smoke])
    assert smoke["key"] not in study.used and study.ctx.max_steps is None
    assert "| no | glue/cola | moc | 0.0003 | 0 | matthews_correlation | 0.0000 |" in accuracy_markdown(
        [*records, smoke]
    )
