"""Plain tables of what a benchmark measured, written by `moc bench` into its --output-dir.

- efficiency: `EFFICIENCY_MD` and `EFFICIENCY_CSV`, every stored run with its figures and their
  ratios to Control (`with_ratios`);
- accuracy: `ACCURACY_MD` (the mean over seeds per task, method and rate, then every cell) and
  `ACCURACY_CSV` (one row per cell, in the format of the study report's CSV).

Their names differ from the study report's, which `benchmarks/` writes into the same folder
(`benchmarks/results` by default), so a `moc bench` run never overwrites that report.

Nothing here judges the numbers: the study reports (significance, the sweep's choice, ablations,
targets, charts, README tables) are built from the same stored results by the scripts in
`benchmarks/`.
"""

from __future__ import annotations

import csv
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moc_cli.bench.methods import REFERENCE_METHOD, SAME_SITE_CONTROL
from moc_cli.bench.timing import paired_time_ratio

# File stems of the plain tables (each written as .md and .csv).
EFFICIENCY_TABLE, ACCURACY_TABLE = "efficiency_table", "accuracy_table"
EFFICIENCY_MD, EFFICIENCY_CSV = f"{EFFICIENCY_TABLE}.md", f"{EFFICIENCY_TABLE}.csv"
ACCURACY_MD, ACCURACY_CSV = f"{ACCURACY_TABLE}.md", f"{ACCURACY_TABLE}.csv"
MIB = 2**20


def with_ratios(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a run with every figure divided by Control's (Control itself: 1.0)."""
    rows = {r["method"]: r for r in run["methods"]}
    ref = rows[REFERENCE_METHOD]

    def ratio(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or b == 0:
            return None
        return a / b

    out = []
    for r in run["methods"]:
        same_site = SAME_SITE_CONTROL.get(r["method"])
        site_ref = rows.get(same_site) if same_site else None
        out.append(
            {
                **r,
                "params_vs_control": ratio(r["trainable_params"], ref["trainable_params"]),
                "saved_vs_control": ratio(r["saved_bytes"], ref["saved_bytes"]),
                "peak_vs_control": ratio(r["peak_bytes"], ref["peak_bytes"]),
                "time_vs_control": paired_time_ratio(r, ref, run["rounds"]),
                "same_site_control": same_site if site_ref else None,
                "saved_vs_same_site": ratio(r["saved_bytes"], site_ref["saved_bytes"]) if site_ref else None,
                "time_vs_same_site": paired_time_ratio(r, site_ref, run["rounds"]) if site_ref else None,
            }
        )
    return out


def format_or_dash(value: float | None, spec: str) -> str:
    """`value` formatted with `spec`, or a dash for a figure that was not measured."""
    return "–" if value is None else format(value, spec)


# ------------------------------------------------------------------------------------ efficiency

EFFICIENCY_CSV_COLUMNS = (
    "model", "model_type", "batch_size", "seq_len", "steps", "rounds", "device", "date_utc", "method",
    "trainable_params", "total_params", "saved_bytes", "peak_bytes", "peak_kind", "median_step_s",
    "params_vs_control", "saved_vs_control", "peak_vs_control", "time_vs_control", "same_site_control",
    "saved_vs_same_site", "time_vs_same_site",
)  # fmt: skip


def efficiency_tables_markdown(runs: Sequence[dict[str, Any]]) -> str:
    out = [
        "# Efficiency measurements",
        "",
        "Written by `moc bench efficiency` from `efficiency.json`: every stored run as measured.",
        "Saved for backward: bytes of the distinct storages one training forward saves for backward.",
        "Peak: on CPU the peak RSS increase over the training steps (a fresh process per method), on",
        "CUDA the peak allocated bytes above the idle model. Step: median forward + backward + optimizer",
        "step after warm-up. × Control: ratio to `control`; step-time ratios are paired round by round.",
        "The study report (targets, growth with length, chart, README tables) is written from the same",
        "file by `python benchmarks/efficiency.py --report-only --output-dir DIR`.",
    ]
    for run in runs:
        commands = [f"`{run.get('command', '')}`"]
        commands += [f"`{run[k]}`" for k in ("rss_command", "saved_command") if run.get(k)]
        timing = (
            f"{run['warmup']} warm-up + {run['steps']} timed steps per method and round, {run['rounds']} rounds"
            if run["steps"] > 0
            else "not timed (saved bytes and peak memory only)"
        )
        out += [
            "",
            f"## {run['model']} ({run['model_type']}, {run['kind']}), batch {run['batch_size']}, "
            f"sequence length {run['seq_len']}",
            "",
            f"- command: {', then '.join(commands)}",
            f"- date: {run['date_utc']}; device {run['device']}; {timing}",
            "",
            "| method | trainable params | saved for backward (MiB) | × Control | peak (MiB) | × Control "
            "| median step (s) | × Control | same-site Control | saved × same site | step × same site |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for r in with_ratios(run):
            peak = r["peak_bytes"] / MIB if r["peak_bytes"] is not None else None
            out.append(
                f"| `{r['method']}` | {r['trainable_params']:,} | {r['saved_bytes'] / MIB:.1f} "
                f"| {format_or_dash(r['saved_vs_control'], '.3f')} | {format_or_dash(peak, '.1f')} "
                f"| {format_or_dash(r['peak_vs_control'], '.3f')} | {format_or_dash(r['median_step_s'], '.3f')} "
                f"| {format_or_dash(r['time_vs_control'], '.3f')} | {r['same_site_control'] or '–'} "
                f"| {format_or_dash(r['saved_vs_same_site'], '.3f')} | {format_or_dash(r['time_vs_same_site'], '.3f')} |"
            )
    return "\n".join(out) + "\n"


def write_efficiency_tables(runs: list[dict[str, Any]], output_dir: Path) -> Path:
    """`EFFICIENCY_MD` and `EFFICIENCY_CSV` in `output_dir`; returns the Markdown file."""
    output_dir = Path(output_dir)
    md = output_dir / EFFICIENCY_MD
    md.write_text(efficiency_tables_markdown(runs), encoding="utf-8")
    with (output_dir / EFFICIENCY_CSV).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(EFFICIENCY_CSV_COLUMNS)
        for run in runs:
            for r in with_ratios(run):
                row = {**run, **r}
                writer.writerow([row.get(c) for c in EFFICIENCY_CSV_COLUMNS])
    return md


# -------------------------------------------------------------------------------------- accuracy

CSV_COLUMNS = (
    "key", "task", "label", "seed", "learning_rate", "precision", "model_tag", "max_steps", "metric", "value",
    "majority", "train_steps", "trainable_params", "wall_s", "device", "threads", "workers",
    "load_average_start", "started_utc",
)  # fmt: skip


def _cell_order(r: dict[str, Any]) -> tuple:
    return (r["task"], r["label"], r["learning_rate"], r["seed"], r["key"])


def write_accuracy_csv(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """One row per stored cell (`CSV_COLUMNS`), by task, method, rate and seed."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in sorted(records, key=_cell_order):
            row = dict(r)
            row["majority"] = (r.get("majority") or {}).get("value")
            row["load_average_start"] = (r.get("load_average_start") or [None])[0]
            writer.writerow([row.get(c) for c in CSV_COLUMNS])
    return Path(path)


def accuracy_tables_markdown(records: Sequence[dict[str, Any]]) -> str:
    cells = sorted(records, key=_cell_order)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in cells:  # every cell of one (task, method, rate, budget, precision, model, cap) but its seed
        groups.setdefault(re.sub(r"\|seed=\d+\|", "|", r["key"]), []).append(r)
    out = [
        "# Accuracy cells",
        "",
        "Written by `moc bench accuracy` from `accuracy.jsonl`: every stored cell as measured (scores ×100",
        "on the whole validation split, final weights), and their mean over seeds. The study report (the",
        "learning-rate sweep's choice, paired differences with 95 % intervals, ablations, routing",
        "diagnostics, README tables) is written from the same file by",
        "`python benchmarks/accuracy.py --report-only --output-dir DIR`.",
        "",
        "## Mean over seeds",
        "",
    ]
    if not cells:
        return "\n".join([*out, "(no cell has run)", ""])
    out += [
        "| task | method | lr | metric | majority class | mean ± std | seeds | diverged | capped at |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for members in groups.values():
        first = members[0]
        values = [100 * r["value"] for r in members if r.get("value") is not None]
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        mean = f"{statistics.fmean(values):.1f}{spread}" if values else "–"
        majority = (first.get("majority") or {}).get("value")
        out.append(
            f"| {first['task']} | {first['label']} | {first['learning_rate']:g} | {first.get('metric', '–')} "
            f"| {format_or_dash(None if majority is None else 100 * majority, '.1f')} | {mean} | {len(members)} "
            f"| {len(members) - len(values)} | {first.get('max_steps') or '–'} |"
        )
    out += [
        "",
        "## Cells",
        "",
        "| task | method | lr | seed | metric | value | steps | wall (s) | device | key |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for r in cells:
        value = r.get("value")
        out.append(
            f"| {r['task']} | {r['label']} | {r['learning_rate']:g} | {r['seed']} | {r.get('metric', '–')} "
            f"| {'diverged' if value is None else f'{100 * value:.1f}'} | {r.get('train_steps') or '–'} "
            f"| {r.get('wall_s') or 0:.0f} | {r.get('device', '–')} | `{r['key']}` |"
        )
    return "\n".join(out) + "\n"


def write_accuracy_files(
    records: Sequence[dict[str, Any]], output_dir: Path, markdown: str, md_name: str, csv_name: str
) -> Path:
    """`markdown` as `md_name` and the per-cell CSV as `csv_name` in `output_dir` (the plain tables
    and the study report share the CSV format); returns the Markdown file."""
    md = Path(output_dir) / md_name
    md.write_text(markdown, encoding="utf-8")
    write_accuracy_csv(records, Path(output_dir) / csv_name)
    return md


def write_accuracy_tables(records: list[dict[str, Any]], output_dir: Path) -> Path:
    """`ACCURACY_MD` and `ACCURACY_CSV` in `output_dir`; returns the Markdown file."""
    return write_accuracy_files(
        records, output_dir, accuracy_tables_markdown(records), ACCURACY_MD, ACCURACY_CSV
    )
