"""Expert-mixture kernel benchmark: the sparse function's strategies and the dense one per pool shape.

    python benchmarks/kernels.py

Writes benchmarks/results/kernels.json and kernels.md (each run replaces the previous one).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds the moc_cli package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per strategy and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the strategies")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--report-only", action="store_true", help="only regenerate kernels.md from the stored kernels.json"
    )
    args = parser.parse_args(argv)

    from moc_cli.bench.kernels import DEFAULT_SHAPES, rewrite_kernel_report, run_kernel_benchmark

    if args.report_only:
        print(f"wrote {rewrite_kernel_report(args.output_dir)}")
        return 0

    command = "python benchmarks/kernels.py" + "".join(f" {shlex.quote(a)}" for a in argv)
    report = run_kernel_benchmark(
        DEFAULT_SHAPES, args.repeats, args.rounds, args.threads, args.output_dir, command
    )
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
