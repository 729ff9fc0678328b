"""The sweep's command line: ``python sweeps/run.py``, ``python -m berter.sweep``, ``berter sweep``.

A thin wrapper over the Python API (berter.sweep.api): the options are parsed by
berter.sweep.options, the API plans and runs the sweep, and this turns its outcome into an
exit status. Everything the user can get wrong (options, search names, variants, data,
model, results directory) is checked before any trial starts; a problem is one line on
stderr and exit status 2, with nothing written.
"""

from __future__ import annotations

import sys

from berter.errors import BerterError
from berter.sweep.api import SweepResult, run_args
from berter.sweep.options import build_parser

__all__ = ["build_parser", "main"]


def main(
    argv: list[str] | None = None,
    *,
    prog: str = "python sweeps/run.py",
    callbacks: list | None = None,
) -> int:
    """Command-line entry point: 0 when the sweep succeeded (or a dry run), 1 when a trial is
    unfinished or none finished with a score, 2 on bad input. ``callbacks``: extra Tune
    callbacks (tests use them)."""
    try:
        outcome = run_args(build_parser(prog).parse_args(argv), callbacks)
    except BerterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(outcome, SweepResult):
        return 0 if outcome.succeeded else 1
    return 0  # --dry-run: the plan was printed
