"""`python -m berter.sweep`: the sweep command line."""

from berter.sweep.cli import main

raise SystemExit(main())
