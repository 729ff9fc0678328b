"""Early exit: the rule contract (base), the methods (rules), post-hoc operating points (calibration) and real early-exit inference (engine)."""

from berter.exits import rules  # noqa: F401  (registers the exit methods in EXIT_METHODS)
