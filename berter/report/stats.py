"""Statistics over seeds: mean and t-interval per group of runs, and paired bootstrap differences.

The unit is a training run, one row of trials.parquet: one seed (``seed``) of one
configuration (``config_id``, the Tune trial; berter.sweep.seeds). Every number the report
prints about seeds comes from here, and :mod:`berter.results` hands the same functions to
pandas users, so both give the same numbers.

- **Per seed.** A group of runs (a configuration; or every run with ``slf=on``) has one
  value per seed and metric: the mean over its runs with that seed (for a configuration,
  the run itself).
- **Mean and 95% confidence interval** over those per-seed values: the t-interval
  ``mean ± t(0.975, n - 1) · s / sqrt(n)``, with ``s`` the sample standard deviation
  (``ddof=1``) of the n seeds' values. It treats the seeds as a sample of training
  randomness (initialisation, batch order, dropout) on a fixed data set: the dev set and any
  ``--max-train`` subset are the same for every seed. With one seed there is no interval:
  the bounds are NaN and the report says "n=1".
- **Difference from a baseline**, paired by seed: per seed, the group's value minus the
  baseline's value at the same seed (seeds that both have), and a percentile bootstrap 95%
  interval for the mean difference: ``RESAMPLES`` resamples of the seeds with replacement,
  drawn from a generator seeded with ``BOOTSTRAP_SEED`` (so a report is reproducible), the
  2.5th and 97.5th percentiles of the resampled means. ``excludes_zero`` marks an interval
  that does not contain 0. With few seeds this interval is narrow by construction (with
  three seeds it excludes 0 whenever the three differences share a sign): read it with n
  and the t-intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

FINISHED = ("terminated", "stopped-early")  # runs whose scores are final
CONFIDENCE = 0.95
RESAMPLES = 10_000  # bootstrap resamples of the seeds
BOOTSTRAP_SEED = 0  # the bootstrap's generator: the same report gives the same intervals
BASELINE = "Baseline"  # the BERTer paper's Table 2 row: plain fine-tuning, no early exit
# The metrics summarised by default: the score, Table 2's task columns, the early-exit
# operating point, wall-clock speedup and training time.
METRICS = (
    "dev_score", "sst_acc", "para_acc", "sts_corr", "dev_score_exit", "avg_exit_layer",
    "layers_saved", "speedup_wall", "train_seconds",
)  # fmt: skip


class Interval(NamedTuple):
    mean: float
    low: float  # NaN with fewer than two values
    high: float
    n: int


# A run's own columns: they say nothing about the group in a summary of several runs.
RUN_COLUMNS = ("trial_id", "trial_name", "seed", "checkpoint", "started_at", "updated_at")


def finished_runs(trials: pd.DataFrame) -> pd.DataFrame:
    """The runs whose scores are final (terminated, or stopped early by ASHA) and finite;
    a table without ``config_id`` (written before seeds) has each run as its configuration."""
    if "config_id" not in trials.columns:
        trials = trials.assign(config_id=trials["trial_id"])
    status = trials["status"].astype(str).str.strip().str.lower()
    dev = pd.to_numeric(trials["dev_score"], errors="coerce")
    return trials[status.isin(FINISHED) & np.isfinite(dev)]


def _numeric(df: pd.DataFrame, name: str) -> pd.Series:
    if name in df.columns:
        return pd.to_numeric(df[name], errors="coerce").astype(float)
    return pd.Series(np.nan, index=df.index, dtype=float)


def _seed_key(runs: pd.DataFrame) -> pd.Series:
    """Which seed each run trained with (results without a seed column: one seed)."""
    if "seed" not in runs.columns:
        return pd.Series(0, index=runs.index)
    return pd.to_numeric(runs["seed"], errors="coerce").fillna(-1).astype(int)


def per_seed(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One row per seed (the index), one column per metric: the mean over the runs that
    trained with that seed (NaN values left out)."""
    values = pd.DataFrame({m: _numeric(runs, m) for m in metrics}, index=runs.index)
    return values.groupby(_seed_key(runs)).mean().sort_index()


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and t confidence interval of the finite values (module docstring)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def paired_bootstrap(
    differences: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """Mean of paired differences and its percentile bootstrap interval (module docstring)."""
    d = np.asarray([v for v in differences if v is not None and math.isfinite(v)], dtype=float)
    n = len(d)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if n == 1:
        return Interval(float(d[0]), math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(d.mean()), float(low), float(high), n)


def _interval_columns(metric: str, interval: Interval, prefix: str = "") -> dict[str, float]:
    name = f"{metric}{prefix}"
    return {
        name: interval.mean,
        f"{name}_low": interval.low,
        f"{name}_high": interval.high,
        f"{name}_n": interval.n,
    }


def summarise(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """Mean, interval bounds and n over seeds of each metric for one group of runs:
    ``<metric>``, ``<metric>_low``, ``<metric>_high``, ``<metric>_n``."""
    seeds = per_seed(runs, metrics)
    out: dict[str, float] = {}
    for m in metrics:
        out.update(_interval_columns(m, t_interval(seeds[m].tolist())))
    return out


def summarise_seeds(
    trials: pd.DataFrame, by: str | Sequence[str] = "config_id", metrics: Sequence[str] = METRICS
) -> pd.DataFrame:
    """One row per group of finished runs (default: per configuration): the first run's
    other columns (less the run's own, ``RUN_COLUMNS``), ``n_seeds``, ``n_runs``, and per
    metric the mean over seeds with its 95% t-interval (``<metric>``, ``<metric>_low``,
    ``<metric>_high``, ``<metric>_n``).

    ``trials`` is trials.parquet as read by ``read_results``; only finished runs count
    (:func:`finished_runs`). Groups keep their first appearance's order."""
    runs = finished_runs(trials)
    keys = [by] if isinstance(by, str) else list(by)
    shared = [c for c in runs.columns if c not in RUN_COLUMNS and c not in metrics]
    if runs.empty:
        extra = [f"{m}{s}" for m in metrics for s in ("", "_low", "_high", "_n")]
        return pd.DataFrame(columns=[*shared, "n_seeds", "n_runs", *extra])
    rows = []
    for _, group in runs.groupby(keys, sort=False, dropna=False):
        first = group.iloc[0][shared].to_dict()
        stats = summarise(group, metrics)
        rows.append(
            {**first, "n_seeds": int(_seed_key(group).nunique()), "n_runs": len(group), **stats}
        )
    return pd.DataFrame(rows)


def baseline_runs(trials: pd.DataFrame, baseline: str | pd.DataFrame | None = None) -> pd.DataFrame:
    """The finished runs of the baseline: ``baseline`` itself when it is a DataFrame of runs;
    else the configuration, preset or variant it names (None: the paper's Baseline preset,
    or its variant by name) and, when that has several configurations, the one with the
    best mean dev score."""
    if isinstance(baseline, pd.DataFrame):
        return finished_runs(baseline)
    runs = finished_runs(trials)
    if baseline is None:
        chosen = baseline_runs(runs, BASELINE)
        return chosen if not chosen.empty else baseline_runs(runs, baseline_variant())
    chosen = runs.iloc[0:0]
    for col in ("config_id", "preset", "variant"):
        if col in runs.columns:
            chosen = runs[runs[col] == baseline]
            if not chosen.empty:
                break
    if chosen.empty or chosen["config_id"].nunique() == 1:
        return chosen
    means = summarise_seeds(chosen, metrics=("dev_score",))
    best = means.sort_values(["dev_score", "config_id"], ascending=[False, True]).iloc[0]
    return chosen[chosen["config_id"] == best["config_id"]]


def baseline_variant() -> str:
    """The short variant name of the paper's Baseline (imported on demand: the variants
    module loads the exit methods, and torch with them)."""
    from berter.config import variant_name
    from berter.variants import BASE_AXES

    return variant_name(BASE_AXES)


def difference(
    runs: pd.DataFrame,
    baseline: pd.DataFrame,
    metrics: Sequence[str] = METRICS,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float]:
    """Per metric, the mean paired difference of ``runs`` from ``baseline`` over the seeds
    both have, its bootstrap interval and n: ``<metric>_diff``, ``_diff_low``,
    ``_diff_high``, ``_diff_n``, and ``<metric>_excludes_zero``."""
    mine, base = per_seed(runs, metrics), per_seed(baseline, metrics)
    common = mine.index.intersection(base.index)
    out: dict[str, float] = {}
    for m in metrics:
        d = (mine.loc[common, m] - base.loc[common, m]).tolist()
        interval = paired_bootstrap(d, resamples=resamples, seed=seed)
        out.update(_interval_columns(m, interval, "_diff"))
        out[f"{m}_excludes_zero"] = bool(interval.n > 1 and (interval.low > 0 or interval.high < 0))
    return out


def paired_difference(
    trials: pd.DataFrame,
    baseline: str | pd.DataFrame | None = None,
    by: str | Sequence[str] = "config_id",
    metrics: Sequence[str] = METRICS,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """One row per group of finished runs (default: per configuration): its difference from
    the baseline (see :func:`baseline_runs`; default the paper's Baseline) on the same
    seeds, per metric with a paired bootstrap 95% interval (:func:`difference`). Empty when
    the results have no baseline."""
    runs = finished_runs(trials)
    base = baseline_runs(trials, baseline)
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    if not base.empty:
        for key, group in runs.groupby(keys, sort=False, dropna=False):
            ids = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
            rows.append({**ids, **difference(group, base, metrics, resamples, seed)})
    return pd.DataFrame(rows, columns=None if rows else keys)
