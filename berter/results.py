"""Sweep results for pandas users: the tables, and their seeds aggregated as the report does.

The report (``sweeps/report.py``) computes every mean, confidence interval and difference
with these functions (berter.report.stats), so a notebook gets the same numbers::

    from berter.results import paired_difference, read_results, summarise_seeds

    trials = read_results("results/<name>")["trials"]   # one row per training run
    summarise_seeds(trials)                 # per configuration: mean over seeds, 95% t-interval, n
    summarise_seeds(trials, by="variant")   # per variant: all its configurations' runs, per seed
    paired_difference(trials)               # per configuration: minus the Baseline, paired by seed,
                                            # with a bootstrap 95% interval and excludes_zero

Only finished runs (terminated, or stopped early by ASHA, with a finite dev score) are
aggregated. The methods are described in berter.report.stats and docs/sweeps.md.
"""

from berter.report.stats import (
    BASELINE,
    CONFIDENCE,
    FINISHED,
    METRICS,
    RESAMPLES,
    baseline_runs,
    finished_runs,
    paired_bootstrap,
    paired_difference,
    per_seed,
    summarise_seeds,
    t_interval,
)
from berter.sweep.store import read_results

__all__ = [
    "BASELINE",
    "CONFIDENCE",
    "FINISHED",
    "METRICS",
    "RESAMPLES",
    "baseline_runs",
    "finished_runs",
    "paired_bootstrap",
    "paired_difference",
    "per_seed",
    "read_results",
    "summarise_seeds",
    "t_interval",
]
