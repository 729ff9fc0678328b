"""`python -m berter.report`: the report command line."""

from berter.report.cli import main

raise SystemExit(main())
