"""`python -m berter.train`."""

from berter.train.cli import main

raise SystemExit(main())
