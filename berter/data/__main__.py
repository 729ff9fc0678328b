"""`python -m berter.data`: download or check task files."""

from berter.data.files import main

raise SystemExit(main())
