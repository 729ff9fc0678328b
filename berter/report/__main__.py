"""`python -m berter.report`: the report command line."""

from berter.report.build import main

raise SystemExit(main())
