"""The report's command line: ``python sweeps/report.py``, ``python -m berter.report`` and
``berter report`` all run :func:`main`.

Bad input (a missing results directory, an unreadable file, --top 0, an object-store URI
without --out) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from berter.errors import ArgumentParser, BerterError
from berter.report.analysis import build_report
from berter.report.figures import TOP_VARIANTS, add_figures
from berter.report.render import print_report, write_report
from berter.sweep.store import Store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python sweeps/report.py",
        description=(
            "Comparison report of a sweep: variant table (BERTer Table 2 shape), ablation, "
            "trade-off and layer-wise plots, hyperparameter importance. Writes report.md, "
            "report.html and PNG figures next to the Parquet files (or into --out)."
        ),
    )
    p.add_argument("results", help="results directory (results/<name>) or an s3:// / gs:// URI")
    p.add_argument(
        "--out", help="directory for the report files (needed for s3:// / gs:// results)"
    )
    p.add_argument(
        "--top", type=int, default=TOP_VARIANTS, help="variants drawn in the per-trial plots"
    )
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.top < 1:
            raise BerterError(f"--top must be >= 1, got {args.top}")
        if args.out:
            out_dir = Path(args.out)
        else:
            local = Store(args.results).local
            if local is None:
                raise BerterError(
                    f"{args.results} is not a local directory: pass --out DIR for the report files"
                )
            out_dir = local
        report = build_report(args.results)
        add_figures(report, args.top)
        paths = write_report(report, out_dir)
    except BerterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print_report(report)
    print(f"wrote {paths[0]}, {paths[1].name} and {len(paths) - 2} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
