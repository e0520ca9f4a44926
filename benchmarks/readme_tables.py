"""Rewrite the README's generated benchmark tables from benchmarks/results/ (never edit them by hand).

python benchmarks/readme_tables.py            # update README.md
python benchmarks/readme_tables.py --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run from a checkout without installing: the repository root holds the moc_cli package. It
# replaces the script's own folder on the path, where kernels.py would shadow the `kernels`
# package that transformers imports.
sys.path[0] = str(ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--check", action="store_true", help="only report whether the README is up to date")
    args = parser.parse_args(argv)

    from benchmarks.readme import render_readme, update_readme

    if args.check:
        current = args.readme.read_text(encoding="utf-8")
        if render_readme(current, args.results) != current:
            print(f"{args.readme}: benchmark tables are out of date; run python benchmarks/readme_tables.py")
            return 1
        print(f"{args.readme}: benchmark tables match {args.results}")
        return 0
    changed = update_readme(args.readme, args.results)
    print(f"{'updated' if changed else 'unchanged'}: {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
