"""`python -m berter.sweep`: the sweep command line."""

from berter.sweep.tuner import main

raise SystemExit(main())
