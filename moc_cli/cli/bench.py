"""`moc bench`: the efficiency and accuracy benchmarks (MoC against Control, LoRA, DoRA, IA3, full, MoLEx).

It measures, stores the results and writes plain tables of them (`moc_cli.bench`); the study reports
built from the same stored results are the scripts in `benchmarks/`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Suite(str, Enum):
    efficiency = "efficiency"
    accuracy = "accuracy"


def bench(
    suite: Annotated[
        Suite,
        typer.Argument(help="Which benchmark: `efficiency` (memory, time, parameters) or `accuracy`."),
    ],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="Efficiency: model alias (minilm, smollm2) or a local model directory; repeatable.",
            show_default="minilm",
        ),
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method", help="Restrict to these methods (repeatable); default: all.", show_default=False
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Efficiency: batch size.")] = 16,
    seq_len: Annotated[
        list[int] | None,
        typer.Option(
            "--seq-len", min=1, help="Efficiency: sequence length(s); repeatable.", show_default="128"
        ),
    ] = None,
    steps: Annotated[
        int,
        typer.Option("--steps", min=0, help="Efficiency: timed steps per method and round (0: no timing)."),
    ] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Efficiency: untimed warm-up steps.")] = 2,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, help="Efficiency: interleaved rounds over all methods.")
    ] = 2,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch intra-op threads.")] = 2,
    no_rss: Annotated[
        bool, typer.Option("--no-rss", help="Efficiency: skip the per-method subprocess RSS measurement.")
    ] = False,
    rss_only: Annotated[
        bool,
        typer.Option(
            "--rss-only",
            help="Efficiency: only measure peak RSS, filling it into the stored run of the same model, "
            "batch size and length (its timings are kept).",
        ),
    ] = False,
    saved_only: Annotated[
        bool,
        typer.Option(
            "--saved-only",
            help="Efficiency: only measure the bytes saved for backward, filling them into the stored run "
            "of the same model, batch size and length (its timings are kept).",
        ),
    ] = False,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", help="Accuracy: task names (repeatable), e.g. glue/rte.", show_default=False),
    ] = None,
    seed: Annotated[
        list[int] | None,
        typer.Option("--seed", help="Accuracy: seeds (repeatable).", show_default="0 1 2"),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid", help="Accuracy: grids to run: sweep, main, ablations (repeatable).", show_default="main"
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            "--max-steps",
            min=1,
            help="Accuracy: cap steps per cell (a smoke run, kept out of the study's tables).",
        ),
    ] = None,
    output_dir: Annotated[
        Path,
        typer.Option(
            "--output-dir",
            help="Where the stored results (json, jsonl) and their tables (md, csv) are written.",
        ),
    ] = Path("benchmarks/results"),
) -> None:
    """Run a benchmark, store its results and write plain tables of them into --output-dir.

    efficiency: results merge into efficiency.json; efficiency_table (.md, .csv) lists every stored
    run's figures and their ratios to Control. accuracy: cells are appended to accuracy.jsonl;
    accuracy_table (.md, .csv) lists every stored cell and the mean over seeds. The study report's
    files in the same folder are left as they are.

    The study reports built from the same files (targets, chart, paired differences with intervals,
    the sweep, ablations, README tables) are written by the scripts in benchmarks/, e.g.
    python benchmarks/efficiency.py --report-only --output-dir DIR.

    Examples:

      moc bench efficiency --model minilm --seq-len 128 --seq-len 512

      moc bench efficiency --method moc-both-shared --method control --method lora-all --no-rss

      moc bench accuracy --grid sweep --task glue/rte   (the study: python benchmarks/accuracy.py --help)
    """
    import shlex
    import sys

    # The exact command, recorded in the results files (global options before `bench` are dropped).
    args = sys.argv[1:]
    tail = args[args.index("bench") + 1 :] if "bench" in args else [suite.value]
    command = shlex.join(["moc", "bench", *tail])
    if suite is Suite.efficiency:
        from moc_cli.bench import EfficiencyError, run_efficiency_benchmark, write_efficiency_tables

        try:
            report = run_efficiency_benchmark(
                models=model or ["minilm"],
                methods=method,
                batch_size=batch_size,
                seq_lens=seq_len or [128],
                steps=steps,
                warmup=warmup,
                rounds=rounds,
                threads=threads,
                measure_rss=not no_rss,
                output_dir=output_dir,
                command=command,
                rss_only=rss_only,
                saved_only=saved_only,
                write_report=write_efficiency_tables,
            )
        except EfficiencyError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from err
        typer.echo(f"wrote {report}")
    else:
        from moc_cli.bench import AccuracyError, run_accuracy_benchmark, write_accuracy_tables

        try:
            report = run_accuracy_benchmark(
                tasks=task,
                seeds=seed,
                grids=grid or ["main"],
                methods=method,
                max_steps=max_steps,
                threads=threads,
                output_dir=output_dir,
                command=command,
                write_report=write_accuracy_tables,
            )
        except AccuracyError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from err
        typer.echo(f"wrote {report}")
