"""The README's benchmark tables, generated from the stored results (never typed by hand).

Run by `benchmarks/readme_tables.py`, and by the efficiency and accuracy scripts after a run that
wrote into the repository's own `benchmarks/results/`.

The README marks each generated block with `<!-- generated:NAME -->` ... `<!-- /generated:NAME -->`;
`update_readme` rewrites what lies between the markers, and a test checks that the committed
README equals what the committed results produce.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmarks.report import _loaded, accuracy_readme_block
from moc_cli.bench import (
    MIB,
    RESULTS_JSON,
    RESULTS_JSONL,
    SAME_SITE_CONTROL,
    format_or_dash,
    load_finished,
    load_runs,
    paired_time_ratio,
    with_ratios,
)

# Rows of the headline efficiency table: (method in efficiency.json, label in the README).
HEADLINE_METHODS = (
    ("control", "Control, FFN"),
    ("moc-ffn", "**MoC ffn**"),
    ("control-both", "Control, attn + FFN"),
    ("moc-both-shared", "**MoC both-shared**"),
    ("lora-qv", "LoRA r=8 query/value"),
    ("dora", "DoRA r=8 query/value"),
    ("lora-all", "LoRA r=8 all linear"),
    ("ia3", "IA3"),
    ("full", "full fine-tuning"),
    ("molex", "MoLEx (top-1, α 0.95)"),
)


class ReadmeError(ValueError):
    """The README lacks a generated block's markers, or the results lack what a table needs."""


def _headline_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The timed MiniLM run at 128 tokens (else the newest MiniLM run at 128 tokens)."""
    candidates = [r for r in runs if r["model"] == "minilm" and r["seq_len"] == 128]
    if not candidates:
        raise ReadmeError(
            "efficiency.json has no MiniLM run at 128 tokens; run benchmarks/efficiency.py first"
        )
    return max(candidates, key=lambda r: (r["steps"] > 0, r["date_utc"]))


def _ratio(value: float | None, reference: float | None, spec: str = ".3f") -> str:
    return "–" if not value or not reference else format(value / reference, spec)


def efficiency_block(runs: list[dict[str, Any]]) -> str:
    run = _headline_run(runs)
    rows = {r["method"]: r for r in run["methods"]}
    timed = run["steps"] > 0
    lines = [
        f"Packaged MiniLM-L6, batch {run['batch_size']} × {run['seq_len']} tokens, "
        f"`{run['command']}` ({run['date_utc']}, {run['machine']['logical_cpus']} CPU cores). "
        "Ratios are to per-block Control on the same sites; `efficiency.md` has every method and length.",
        "",
        "| method | trainable params | saved for backward | × Control | peak RSS increase | × Control "
        "| median step | × Control |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, label in HEADLINE_METHODS:
        r = rows.get(method)
        if r is None:
            continue
        # MoC is compared with the Control on its own sites; the rest with Control on the FFN site.
        ref = rows[SAME_SITE_CONTROL.get(method) or (method if method.startswith("control") else "control")]
        lines.append(
            f"| {label} | {r['trainable_params']:,} | {r['saved_bytes'] / MIB:.1f} MiB "
            f"| {_ratio(r['saved_bytes'], ref['saved_bytes'])} "
            f"| {format_or_dash(r['peak_bytes'] / MIB if r['peak_bytes'] else None, '.0f')} MiB "
            f"| {_ratio(r['peak_bytes'], ref['peak_bytes'])} "
            f"| {format_or_dash(r['median_step_s'], '.2f')} s | {format_or_dash(paired_time_ratio(r, ref, run['rounds']), '.2f')} |"
        )
    if timed and _loaded(run):
        lines += [
            "",
            "Other jobs loaded the machine while timing: step times are indicative only.",
        ]
    return "\n".join(lines)


def efficiency_targets_block(runs: list[dict[str, Any]]) -> str:
    """Every stored run's MoC variants against their same-site Control: saved bytes × and step × (paired)."""
    moc_variants = list(SAME_SITE_CONTROL)
    if not runs:
        raise ReadmeError("efficiency.json has no runs; run benchmarks/efficiency.py first")
    lines = [
        "| model | batch × tokens | "
        + " | ".join(f"`{m}` saved / step" for m in moc_variants)
        + " | timing | date (UTC) |",
        "|---|---|" + "---:|" * len(moc_variants) + "---|---|",
    ]
    for run in runs:
        rows = {r["method"]: r for r in with_ratios(run)}
        cells = []
        for method in moc_variants:
            r = rows.get(method)
            if r is None or r["saved_vs_same_site"] is None:  # variant or its Control not measured
                cells.append("–")
                continue
            step = r["time_vs_same_site"]
            cells.append(f"{r['saved_vs_same_site']:.3f}× / " + ("–" if step is None else f"{step:.2f}×"))
        if run["steps"] == 0:
            timing = "not timed (memory only)"
        else:
            timing = f"{run['rounds']} rounds × {run['steps']} steps"
            if run["machine"].get("steps_interleaved"):
                timing += ", steps interleaved with Control"
            if _loaded(run):
                timing += ", machine overloaded (step times indicative only)"
        lines.append(
            f"| {run['model']} | {run['batch_size']} × {run['seq_len']} | "
            + " | ".join(cells)
            + f" | {timing} | {run['date_utc'][:16]} |"
        )
    return "\n".join(lines)


def accuracy_block(records: list[dict[str, Any]]) -> str:
    """The converged accuracy study's table, paired differences and conclusion; while no main-grid
    cell exists, the line saying the study is pending with the commands that run it."""
    return accuracy_readme_block(records)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise ReadmeError(
            f"README.md has no `<!-- generated:{name} -->` ... `<!-- /generated:{name} -->` block; add the two "
            "marker lines where the table belongs"
        )
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text, count=1)


def render_readme(text: str, results_dir: Path) -> str:
    """`text` with every generated block recomputed from the results in `results_dir`."""
    runs = load_runs(results_dir / RESULTS_JSON)
    text = replace_block(text, "efficiency", efficiency_block(runs))
    text = replace_block(text, "efficiency-targets", efficiency_targets_block(runs))
    records = list(load_finished(results_dir / RESULTS_JSONL).values())
    return replace_block(text, "accuracy", accuracy_block(records))


def update_readme(readme: Path, results_dir: Path) -> bool:
    """Rewrite the generated blocks of `readme`; returns whether anything changed."""
    before = readme.read_text(encoding="utf-8")
    after = render_readme(before, results_dir)
    if after != before:
        readme.write_text(after, encoding="utf-8")
    return after != before


def refresh_repository_readme(root: Path, results_dir: Path) -> None:
    """After a benchmark run: regenerate `root/README.md`'s tables if `results_dir` is the repository's own."""
    if Path(results_dir).resolve() != (root / "benchmarks" / "results").resolve():
        return
    try:
        if update_readme(root / "README.md", results_dir):
            print(f"updated the benchmark tables in {root / 'README.md'}")
    except ReadmeError as err:
        print(f"README.md not updated: {err}")
