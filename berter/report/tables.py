"""The report's tables over finished runs: configurations, the best per variant, differences
from the Baseline, the ablation per axis, the early-exit point and layer-wise curves.

Each takes the finished runs (``berter.report.analysis.finished_trials``) and returns a
DataFrame (or a row); ``berter.report.analysis.build_report`` puts them in the ``Report``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from berter.config import AXES
from berter.report.cells import (
    DASH,
    as_list,
    numeric,
)
from berter.report.stats import (
    METRICS,
    difference,
    summarise,
    summarise_seeds,
    t_interval,
)
from berter.tasks import TASKS, metric_column
from berter.variants import BASE_AXES

# Task -> its metric column in the results; Table 2's display names for the paper's three.
TASK_COLUMN = {name: metric_column(task) for name, task in TASKS.items()}
TASK_LABELS = {"sst_acc": "SST", "para_acc": "Paraphrase", "sts_corr": "STS"}

EXIT_TOLERANCE = 0.01  # early-exit operating point: dev_score_exit within 1% (relative)


def task_label(col: str) -> str:
    return TASK_LABELS.get(col, col)


def report_metrics(finished: pd.DataFrame) -> list[str]:
    """What the report summarises over seeds: ``berter.report.stats.METRICS``, the metric of
    any other task, and per task the metric and exit layer at the early-exit operating point."""
    columns = task_columns(finished)
    at_exit = [f"{c}_exit" for c in columns]
    at_exit += [f"{t}_exit_layer" for t, c in TASK_COLUMN.items() if c in columns]
    extra = [c for c in columns if c not in METRICS]
    return [*METRICS, *extra, *(c for c in at_exit if c in finished.columns)]


def configurations(finished: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per configuration (berter.report.stats.summarise_seeds: means over its seeds
    with their intervals), best first by mean dev score (ties: faster, then config_id)."""
    configs = summarise_seeds(finished, metrics=metrics)
    if configs.empty:
        return configs
    return configs.sort_values(
        ["dev_score", "train_seconds", "config_id"], ascending=[False, True, True],
        na_position="last",
    ).reset_index(drop=True)  # fmt: skip


def best_per_variant(configs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: its best configuration (``configs`` is ranked), plus
    ``n_trials``, the variant's configurations (Tune trials); sorted by dev score."""
    if configs.empty:
        return configs.assign(n_trials=pd.Series(dtype=int))
    best = configs.drop_duplicates("variant", keep="first").copy()
    best["n_trials"] = best["variant"].map(configs["variant"].value_counts()).astype(int)
    return best.reset_index(drop=True)


def differences(
    finished: pd.DataFrame, rows: pd.DataFrame, baseline: pd.DataFrame, metrics: list[str]
) -> pd.DataFrame:
    """Per configuration in ``rows``: its paired difference from the baseline's runs
    (berter.report.stats.difference), indexed by config_id; empty without a baseline."""
    if baseline.empty or rows.empty:
        return pd.DataFrame()
    out = {
        cid: difference(finished[finished["config_id"] == cid], baseline, metrics)
        for cid in rows["config_id"]
    }
    return pd.DataFrame.from_dict(out, orient="index")


def ablation(finished: pd.DataFrame, configs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per axis value, over all its finished runs: configurations (``trials``), per metric
    the mean over seeds of the per-seed means with its interval, the best configuration's
    mean dev score, and the paired difference from the runs with the Baseline's value of
    that axis (``baseline`` marks that row)."""
    rows = []
    for axis in AXES:
        if axis not in finished.columns:
            continue
        base = finished[finished[axis] == BASE_AXES[axis]]
        for value, group in finished.groupby(axis, dropna=False, sort=False):
            stats = summarise(group, metrics)
            same = configs[configs[axis] == value] if axis in configs.columns else configs
            row = {
                "axis": axis, "value": DASH if pd.isna(value) else str(value),
                "trials": int(group["config_id"].nunique()), "mean_dev": stats["dev_score"],
                "best_dev": numeric(same, "dev_score").max(),
                "mean_seconds": stats["train_seconds"], "baseline": value == BASE_AXES[axis],
                **stats,
            }  # fmt: skip
            if not base.empty:
                row.update(difference(group, base, metrics))
            rows.append(row)
    columns = ["axis", "value", "trials", "mean_dev", "best_dev", "mean_seconds", "baseline"]
    out = pd.DataFrame(rows, columns=None if rows else columns)
    if out.empty:
        return out
    order = {a: i for i, a in enumerate(AXES)}
    out["_axis"] = out["axis"].map(order)
    out = out.sort_values(["_axis", "mean_dev"], ascending=[True, False])
    return out.drop(columns="_axis").reset_index(drop=True)


def early_exit_point(finished: pd.DataFrame, tolerance: float = EXIT_TOLERANCE) -> pd.Series | None:
    """The best early-exit operating point: among configurations (or runs) that exit early
    (layers_saved > 0) with dev_score_exit >= (1 - tolerance) * dev_score, the one that saves
    the most layers (ties: higher dev_score_exit). None when none qualifies."""
    dev, dev_exit, saved = (
        numeric(finished, c) for c in ("dev_score", "dev_score_exit", "layers_saved")
    )
    ok = np.isfinite(dev_exit) & (saved > 0) & (dev_exit >= dev - tolerance * dev.abs())
    if not ok.any():
        return None
    cand = finished[ok].assign(_saved=saved[ok], _exit=dev_exit[ok])
    return cand.sort_values(["_saved", "_exit", "config_id"], ascending=[False, False, True]).iloc[
        0
    ]


# ----------------------------------------------------------------------------- layer-wise
def task_columns(trials: pd.DataFrame) -> list[str]:
    """Task metric columns with values in these trials, Table 2's three first (a GLUE sweep's
    files still have empty sst_acc/para_acc/sts_corr columns)."""
    known = [c for c in TASK_LABELS if c in trials.columns]
    extra = sorted(
        c for c in trials.columns
        if (c.endswith("_acc") or c.endswith("_corr")) and c not in known
        and pd.api.types.is_numeric_dtype(trials[c])
    )  # fmt: skip
    return [c for c in known + extra if numeric(trials, c).notna().any()]


def layer_curves(
    trial: pd.Series, exits: pd.DataFrame, columns: list[str]
) -> dict[str, list[float]]:
    """Per-layer scores of one run: {task label: [score at layer 1..n]}, plus "Dev score".

    Per task: the ``<metric>_layers`` column, else the fixed-layer curve a run without an
    exit method leaves in exits.parquet (every example leaves at layer k). Dev score:
    ``layer_scores``.
    """
    out: dict[str, list[float]] = {}
    for col in columns:
        values = as_list(trial.get(f"{col}_layers"))
        if (
            not values
            and not exits.empty
            and {"trial_id", "task", "exit_method"} <= set(exits.columns)
        ):
            task = next((t for t, c in TASK_COLUMN.items() if c == col), col.rsplit("_", 1)[0])
            rows = exits[
                (exits["trial_id"] == trial["trial_id"]) & (exits["task"] == task)
                & (exits["exit_method"] == "none")
            ]  # fmt: skip
            values = rows.sort_values("threshold")["metric"].astype(float).tolist()
        if values:
            out[task_label(col)] = values
    dev = as_list(trial.get("layer_scores"))
    if dev:
        out["Dev score"] = dev
    return out


def config_curves(
    runs: pd.DataFrame, exits: pd.DataFrame, columns: list[str]
) -> dict[str, tuple[list[float], list[float]]]:
    """Per-layer curves of a configuration: {curve: (mean over its seeds per layer, 95%
    interval half-width per layer, NaN with one seed)}, for the curves every seed has."""
    per_run = [layer_curves(r, exits, columns) for _, r in runs.iterrows()]
    out = {}
    for curve in per_run[0] if per_run else []:
        series = [c[curve] for c in per_run if curve in c]
        if len(series) != len(per_run) or len({len(s) for s in series}) != 1:
            continue
        intervals = [t_interval(values) for values in zip(*series, strict=True)]
        out[curve] = ([i.mean for i in intervals], [(i.high - i.low) / 2 for i in intervals])
    return out


def layerwise(finished: pd.DataFrame, configs: pd.DataFrame, exits: pd.DataFrame) -> pd.DataFrame:
    """Per strategy (its best configuration) and curve: the best layer of the mean curve over
    seeds, its score and the last's; ``errors`` are the per-layer interval half-widths."""
    rows = []
    if configs.empty or "strategy" not in configs.columns:
        return pd.DataFrame(columns=["strategy", "label", "trial_id", "curve", "scores"])
    cols = task_columns(finished)
    for strategy, group in configs.groupby("strategy", sort=False):
        best = group.iloc[0]  # configs are ranked
        runs = finished[finished["config_id"] == best["config_id"]]
        for curve, (scores, errors) in config_curves(runs, exits, cols).items():
            finite_scores = [s if math.isfinite(s) else -math.inf for s in scores]
            top = int(np.argmax(finite_scores))
            rows.append({
                "strategy": strategy, "label": best["label"], "trial_id": best["config_id"],
                "curve": curve, "scores": scores, "errors": errors, "n": len(runs),
                "layers": len(scores), "best_layer": top + 1, "best_score": scores[top],
                "last_score": scores[-1],
                "peaks_early": top + 1 < len(scores) and scores[top] > scores[-1],
            })  # fmt: skip
    return pd.DataFrame(rows)
