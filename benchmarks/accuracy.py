"""Accuracy study: MoC against per-block Control, LoRA (query/value and all linear), DoRA and full
fine-tuning on the packaged MiniLM-L6, at a per-task budget in epochs, paired seeds, rates from a sweep.

    python benchmarks/accuracy.py --grid sweep                   # 1. learning rates (seed 0; CoLA, MRPC, RTE)
    python benchmarks/accuracy.py --grid main --grid ablations   # 2. the study, at the swept rates
    python benchmarks/accuracy.py --report-only                  # regenerate accuracy.md/.csv (and README)

On one GPU with many processes (each cell one process, one torch thread, bf16):

    MOC_SHARED_DIR=/path/shared python benchmarks/accuracy.py --grid sweep --model /path/minilm \\
        --device cuda --workers 14 --deadline-s 240 --output-dir $OUT/acc

Resumable: finished cells are kept in <output-dir>/accuracy.jsonl and skipped on rerun; a second
process running the same command shares the queue (each cell is locked while it trains). After
--deadline-s no cell starts; cells still training at deadline + --grace-s are stopped and not
recorded. `--merge FILE` first copies another run's cells in (e.g. a sweep from another machine).
Every stored cell records the command that trains it again: `--cell KEY`.

The cells are measured and stored by `moc_cli.bench` (what `moc bench accuracy` runs too); this
script writes the study report from them (`report.py`: accuracy.md, accuracy.csv) and the README's
accuracy block (`readme.py`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run from a checkout without installing: the repository root holds the moc_cli package. It
# replaces the script's own folder on the path, where kernels.py would shadow the `kernels`
# package that transformers imports.
sys.path[0] = str(ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/accuracy.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--grid", action="append", metavar="GRID", help="sweep, main or ablations (repeatable; default main)"
    )
    parser.add_argument("--task", action="append", help="only these tasks of the grids (repeatable)")
    parser.add_argument(
        "--method", action="append", help="only these methods of the sweep/main grid (repeatable)"
    )
    parser.add_argument("--seed", type=int, action="append", help="only these seeds (repeatable)")
    parser.add_argument("--cell", action="append", metavar="KEY", help="train exactly this stored cell key")
    parser.add_argument("--model", default=None, help="local model folder (default: the packaged MiniLM-L6)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when torch sees it), cuda or cpu")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16")
    parser.add_argument(
        "--workers", type=int, default=0, help="cells at once, each in its own process (0: here)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    parser.add_argument(
        "--deadline-s", type=float, default=None, help="start no cell after this many seconds"
    )
    parser.add_argument(
        "--grace-s", type=float, default=120.0, help="stop cells still training this long after the deadline"
    )
    parser.add_argument(
        "--max-steps", type=int, default=None, help="cap every cell (smoke runs; not the study)"
    )
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work-dir", type=Path, default=None, help="run folders (default: ~/.cache/moc_cli)")
    parser.add_argument("--log-dir", type=Path, default=None, help="worker logs (default: <work-dir>/logs)")
    parser.add_argument(
        "--merge", type=Path, action="append", default=[], help="copy cells from this accuracy.jsonl"
    )
    parser.add_argument("--keep-weights", action="store_true", help="keep each run's adapter/model weights")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the cells to run and their steps; train nothing"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only regenerate the report from stored cells"
    )
    parser.add_argument("--cell-runner", default=None, help=argparse.SUPPRESS)  # tests: file.py:function
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.device == "cpu" and args.workers == 0:
        # Before torch loads: Trainer would otherwise move the model to a visible GPU by itself.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    from benchmarks.report import write_accuracy_report
    from moc_cli.bench import (
        RESULTS_JSONL,
        AccuracyError,
        load_finished,
        load_runner,
        merge_records,
        run_accuracy_benchmark,
    )

    try:
        if args.report_only:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            store = args.output_dir / RESULTS_JSONL
            if args.merge:
                print(f"merged {merge_records(store, args.merge)} cell(s)")
            print(f"wrote {write_accuracy_report(list(load_finished(store).values()), args.output_dir)}")
            _refresh_readme(args.output_dir)
            return 0
        report = run_accuracy_benchmark(
            tasks=args.task,
            seeds=args.seed,
            grids=args.grid or ["main"],
            methods=args.method,
            max_steps=args.max_steps,
            threads=args.threads,
            output_dir=args.output_dir,
            command=shlex.join(["python", "benchmarks/accuracy.py", *argv]),
            work_dir=args.work_dir,
            cell_runner=load_runner(args.cell_runner),
            model=args.model,
            device=args.device,
            precision=args.precision,
            workers=args.workers,
            deadline_s=args.deadline_s,
            grace_s=args.grace_s,
            cells=args.cell,
            merge=args.merge,
            keep_weights=args.keep_weights,
            log_dir=args.log_dir,
            dry_run=args.dry_run,
            write_report=write_accuracy_report,
        )
    except AccuracyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.dry_run:
        print(f"wrote {report}")
        _refresh_readme(args.output_dir)
    return 0


def _refresh_readme(results_dir: Path) -> None:
    from benchmarks.readme import refresh_repository_readme

    refresh_repository_readme(ROOT, results_dir)


if __name__ == "__main__":
    raise SystemExit(main())
