"""Run a hyperparameter sweep: ``python sweeps/run.py --search lr,batch,dropout [...]``.

See ``python sweeps/run.py --help`` and :mod:`berter.sweep`.
"""

import sys

from berter.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
