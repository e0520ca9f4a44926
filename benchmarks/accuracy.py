"""Accuracy benchmark: every method under one budget, trained by the project's runner (`moc train`).

    python benchmarks/accuracy.py --task glue/sst2 --seed 0 --seed 1 --seed 2 --max-steps 200
    python benchmarks/accuracy.py --task glue/sst2 --grid ablations --seed 0

Resumable: finished cells are kept in benchmarks/results/accuracy.jsonl and skipped on rerun;
accuracy.md and accuracy.csv are regenerated from all stored cells. To use several cores, start
the same command in several terminals with `--threads 1`: each cell is locked by the process that
trains it, so the processes split the queue instead of repeating cells.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds the moc_cli package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--task", action="append", help="e.g. glue/sst2, glue/rte, superglue/cb, demo/sentiment"
    )
    parser.add_argument("--seed", type=int, action="append")
    parser.add_argument("--grid", action="append", choices=["main", "ablations"])
    parser.add_argument("--method", action="append", help="restrict the main grid to these methods")
    parser.add_argument(
        "--lr", action="append", default=[], metavar="METHOD=VALUE", help="override a method's learning rate"
    )
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--report-only", action="store_true", help="only regenerate the report from the stored results"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="run directories (default: ~/.cache/moc_cli)"
    )
    args = parser.parse_args(argv)

    import moc_cli  # noqa: F401  (registers MoC and MoLEx with peft)
    from moc_cli.bench.accuracy import RESULTS_JSONL, Budget, load_finished, run_accuracy_benchmark

    if args.report_only:
        from moc_cli.bench.report import write_accuracy_report

        args.output_dir.mkdir(parents=True, exist_ok=True)
        records = list(load_finished(args.output_dir / RESULTS_JSONL).values())
        print(f"wrote {write_accuracy_report(records, args.output_dir)}")
        _refresh_readme(args.output_dir)
        return 0

    report = run_accuracy_benchmark(
        tasks=args.task or ["glue/sst2"],
        seeds=args.seed or [0, 1, 2],
        grids=args.grid or ["main"],
        methods=args.method,
        max_steps=args.max_steps,
        threads=args.threads,
        output_dir=args.output_dir,
        command=shlex.join(["python", "benchmarks/accuracy.py", *argv]),
        budget=Budget(max_steps=args.max_steps, batch_size=args.batch_size, max_length=args.max_length),
        work_dir=args.work_dir,
        learning_rates={k: float(v) for k, v in (item.split("=", 1) for item in args.lr)},
    )
    print(f"wrote {report}")
    _refresh_readme(args.output_dir)
    return 0


def _refresh_readme(results_dir: Path) -> None:
    from moc_cli.bench.readme import refresh_repository_readme

    refresh_repository_readme(Path(__file__).resolve().parents[1], results_dir)


if __name__ == "__main__":
    raise SystemExit(main())
