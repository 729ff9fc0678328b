"""Comparison report of a sweep: ``python sweeps/report.py results/<name> [--out DIR]``.

See ``python sweeps/report.py --help`` and :mod:`berter.report`.
"""

import sys

from berter.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
