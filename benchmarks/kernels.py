"""Expert-mixture kernel benchmark: the sparse function's strategies and the dense one per pool shape.

    python benchmarks/kernels.py
    python benchmarks/kernels.py --device cuda --dtype bfloat16    # on a GPU: kernels_cuda.{json,md}
    python benchmarks/kernels.py --smoke --output-dir /tmp/k       # two small shapes: checks the pipeline

Writes benchmarks/results/kernels.json and kernels.md (kernels_cuda.* on a GPU; each run replaces
the previous one). Before timing, every strategy is checked against a float64 reference.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds the moc_cli package. It
# replaces the script's own folder on the path, where kernels.py would shadow the `kernels`
# package that transformers imports.
sys.path[0] = str(Path(__file__).resolve().parents[1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per strategy and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the strategies")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU shapes, synchronised timing)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--smoke", action="store_true", help="two small shapes, one repeat: checks the pipeline")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--report-only", action="store_true", help="only regenerate kernels.md from the stored kernels.json"
    )
    args = parser.parse_args(argv)

    from moc_cli.bench.kernels import (
        CUDA_SHAPES,
        DEFAULT_SHAPES,
        SMOKE_SHAPES,
        rewrite_kernel_report,
        run_kernel_benchmark,
    )

    if args.report_only:
        print(f"wrote {rewrite_kernel_report(args.output_dir, args.device)}")
        return 0

    command = "python benchmarks/kernels.py" + "".join(f" {shlex.quote(a)}" for a in argv)
    shapes = SMOKE_SHAPES if args.smoke else CUDA_SHAPES if args.device.startswith("cuda") else DEFAULT_SHAPES
    repeats, rounds = (1, 1) if args.smoke else (args.repeats, args.rounds)
    report = run_kernel_benchmark(
        shapes, repeats, rounds, args.threads, args.output_dir, command, device=args.device, dtype=args.dtype
    )
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
