"""Efficiency benchmark: MoC vs Control, LoRA, DoRA, IA3, full fine-tuning and MoLEx.

    python benchmarks/efficiency.py --model minilm --seq-len 128 --seq-len 512
    python benchmarks/efficiency.py --model smollm2 --seq-len 128 --steps 2 --rounds 1

Results merge into benchmarks/results/efficiency.json, measured and stored by `moc_cli.bench` (what
`moc bench efficiency` runs too); this script then writes the study report from it (`report.py`:
efficiency.md with the targets and the growth with length, efficiency.png) and the README's
efficiency blocks (`readme.py`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds the moc_cli package. It
# replaces the script's own folder on the path, where kernels.py would shadow the `kernels`
# package that transformers imports.
sys.path[0] = str(Path(__file__).resolve().parents[1])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", help="minilm, smollm2, a pkg:// URI or a model folder")
    parser.add_argument("--method", action="append", help="restrict to these methods (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, action="append")
    parser.add_argument(
        "--steps", type=int, default=5, help="timed steps per method and round (0: no timing)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all methods")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-rss", action="store_true", help="skip the per-method peak-RSS subprocesses")
    parser.add_argument(
        "--rss-only",
        action="store_true",
        help="only measure peak RSS, filling it into the stored run of the same model, batch size and length",
    )
    parser.add_argument(
        "--saved-only",
        action="store_true",
        help="only measure the bytes saved for backward, filling them into the stored run of the same "
        "model, batch size and length",
    )
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--report-only", action="store_true", help="only regenerate the report from the stored results"
    )
    args = parser.parse_args(argv)

    import moc_cli  # noqa: F401  (registers MoC and MoLEx with peft)
    from benchmarks.report import write_efficiency_report
    from moc_cli.bench import RESULTS_JSON, EfficiencyError, load_runs, run_efficiency_benchmark

    if args.report_only:
        print(f"wrote {write_efficiency_report(load_runs(args.output_dir / RESULTS_JSON), args.output_dir)}")
        _refresh_readme(args.output_dir)
        return 0

    try:
        report = run_efficiency_benchmark(
            models=args.model or ["minilm"],
            methods=args.method,
            batch_size=args.batch_size,
            seq_lens=args.seq_len or [128],
            steps=args.steps,
            warmup=args.warmup,
            rounds=args.rounds,
            threads=args.threads,
            measure_rss=not args.no_rss,
            output_dir=args.output_dir,
            command=shlex.join(["python", "benchmarks/efficiency.py", *argv]),
            rss_only=args.rss_only,
            saved_only=args.saved_only,
            write_report=write_efficiency_report,
        )
    except EfficiencyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {report}")
    _refresh_readme(args.output_dir)
    return 0


def _refresh_readme(results_dir: Path) -> None:
    from benchmarks.readme import refresh_repository_readme

    refresh_repository_readme(Path(__file__).resolve().parents[1], results_dir)


if __name__ == "__main__":
    raise SystemExit(main())
