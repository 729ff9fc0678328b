"""The report's figures: matplotlib plots drawn off-screen into PNG bytes.

The variants' scores with their confidence intervals, trade-off plots (task metric vs
average exit layer; dev score vs training time with the Pareto front), dev score per epoch,
dev score by learning rate, batch size and dropout (the BERTer paper's Figures 2-4), the
score of every exit layer per strategy, and hyperparameter importance. Each plot whose data
is missing leaves a note in the report instead.

A point is a configuration: the mean over its seeds, with an error bar for the 95%
t-interval (berter.report.stats) when it has more than one seed.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D

from berter.report.analysis import Figure, Report
from berter.report.cells import finite, fmt_value, numeric
from berter.report.stats import t_interval
from berter.report.tables import TASK_COLUMN, TASK_LABELS, task_columns, task_label
from berter.sweep.store import pareto_front

TOP_VARIANTS = 6  # best variants drawn in the per-epoch and exit trade-off plots
FIGURE_NAMES = (
    "variants",
    "tradeoff_exit",
    "dev_vs_time",
    "dev_per_epoch",
    "hyperparameters",
    "layerwise",
    "importance",
)


def _new_figure(ncols: int, width: float = 4.6, height: float = 3.6) -> tuple[Any, list[Any]]:
    fig = MplFigure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    return buf.getvalue()


def _colors(n: int) -> list[Any]:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _half(df: pd.DataFrame, metric: str) -> np.ndarray:
    """Error bar lengths: the 95% interval half-widths of ``metric`` (0 where there is none:
    one seed, or a table without interval columns)."""
    low, high = numeric(df, f"{metric}_low"), numeric(df, f"{metric}_high")
    return np.nan_to_num(((high - low) / 2).to_numpy(dtype=float), nan=0.0)


def add_figures(report: Report, top: int = TOP_VARIANTS) -> None:
    """Draw the report's figures into ``report.figures``; each plot is skipped with a note
    when its data is missing. ``top`` variants are drawn in the per-trial plots."""
    if report.finished.empty:
        report.notes.append("Plots skipped: no finished trial yet.")
        return
    plots = (
        _fig_variants,
        _fig_exits,
        _fig_dev_vs_time,
        _fig_epochs,
        _fig_hyperparameters,
        _fig_layerwise,
        _fig_importance,
    )
    for plot in plots:
        result = plot(report, top)
        if isinstance(result, Figure):
            report.figures.append(result)
        elif result:
            report.notes.append(result)


def _top_trials(report: Report, top: int) -> pd.DataFrame:
    return report.variants.head(top)


def _fig_variants(report: Report, top: int) -> Figure | str:
    """Every variant's mean dev score and task metrics over seeds, with 95% intervals."""
    df = report.variants
    metrics = [("dev_score", "dev score")] + [(c, task_label(c)) for c in task_columns(report.finished)]
    fig, axes = _new_figure(len(metrics), width=3.3, height=0.42 * len(df) + 1.6)
    y = np.arange(len(df))[::-1]
    base = df[df["config_id"] == report.baseline]
    for i, (ax, (col, title)) in enumerate(zip(axes, metrics, strict=True)):
        ax.errorbar(numeric(df, col), y, xerr=_half(df, col), fmt="o", ms=4, capsize=3,
                    color="#4c72b0")  # fmt: skip
        if not base.empty and finite(base.iloc[0].get(col)):
            ax.axvline(float(base.iloc[0][col]), color="grey", ls="--", lw=1)
        ax.set_yticks(y, list(df["label"]) if i == 0 else [""] * len(df))
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="x")
    seeds = int(numeric(df, "n_seeds").max()) if "n_seeds" in df.columns else 1
    return Figure(
        "variants",
        "Variants: dev score and task metrics",
        (
            f"Per variant, its best configuration's mean over seeds (up to {seeds}) with the "
            "95% t-interval; dashed: the Baseline."
            if seeds > 1
            else "Per variant, its best trial (one seed: no interval); dashed: the Baseline."
        ),
        _png(fig),
    )


def _fig_exits(report: Report, top: int) -> Figure | str:
    ex = report.exits
    need = {"trial_id", "task", "exit_method", "metric", "avg_exit_layer"}
    if ex.empty or not need <= set(ex.columns):
        return "Exit trade-off plot skipped: exits.parquet is missing or empty."
    if "config_id" not in ex.columns:
        ex = ex.assign(config_id=ex["trial_id"])
    # the best variants, plus the best configuration of every exit method not among them
    chosen = list(_top_trials(report, top)["config_id"])
    if "exit_method" in report.configs.columns:
        for _, group in report.configs.groupby("exit_method", sort=False):
            if not set(group["config_id"]) & set(chosen):
                chosen.append(group.iloc[0]["config_id"])
    ex = ex[ex["config_id"].isin(chosen)]
    if ex.empty:
        return "Exit trade-off plot skipped: no exit rows for the finished trials."
    configs = report.configs.set_index("config_id")
    labels = configs["label"].to_dict()
    tasks = list(dict.fromkeys(ex["task"]))
    fig, axes = _new_figure(len(tasks))
    colors = dict(zip(chosen, _colors(len(chosen)), strict=True))
    for ax, task in zip(axes, tasks, strict=True):
        for cid, rows in ex[ex["task"] == task].groupby("config_id", sort=False):
            method = rows["exit_method"].iloc[0]
            for k, (_, run) in enumerate(rows.groupby("trial_id", sort=False)):
                run = run.sort_values("avg_exit_layer")
                ax.plot(run["avg_exit_layer"], run["metric"], marker="o", ms=3, color=colors[cid],
                        alpha=1.0 if k == 0 else 0.45,
                        label=f"{labels.get(cid, cid)} ({method})" if k == 0 else None)  # fmt: skip
            point = _operating_point(configs, cid, task)
            if point is not None:
                (layer, dx), (metric, dy) = point
                ax.errorbar([layer], [metric], xerr=[dx], yerr=[dy], marker="D", ms=7,
                            color=colors[cid], mec="black", capsize=3, zorder=3)  # fmt: skip
        ax.set_title(TASK_LABELS.get(TASK_COLUMN.get(task, task), task))
        ax.set_xlabel("average exit layer")
        ax.set_ylabel("dev metric")
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=7)
    return Figure(
        "tradeoff_exit",
        "Task metric vs average exit layer",
        "Per task, the dev metric at each exit setting of the best trials' exit methods "
        "(fixed layer k for trials without one; one line per seed); diamonds: the operating "
        "point chosen on the calibration slice, mean over seeds with 95% intervals. Up and to "
        "the left is better.",
        _png(fig),
    )


def _operating_point(
    configs: pd.DataFrame, config_id: str, task: str
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """((average exit layer, error), (metric, error)) a configuration chose for a task, means
    over its seeds (``<task>_exit_layer`` and ``<metric>_exit``), or None without them."""
    metric = TASK_COLUMN.get(task, task)
    cols = (f"{task}_exit_layer", f"{metric}_exit")
    if config_id not in configs.index or not set(cols) <= set(configs.columns):
        return None
    row = configs.loc[[config_id]]
    values = [float(row.iloc[0][c]) if finite(row.iloc[0][c]) else math.nan for c in cols]
    if not all(math.isfinite(v) for v in values):
        return None
    return tuple((v, float(_half(row, c)[0])) for v, c in zip(values, cols, strict=True))


def _fig_dev_vs_time(report: Report, top: int) -> Figure | str:
    df = report.configs.assign(
        _dev=numeric(report.configs, "dev_score"), _sec=numeric(report.configs, "train_seconds")
    )
    df = df[np.isfinite(df["_dev"]) & np.isfinite(df["_sec"])]
    if df.empty:
        return "Dev score vs training time plot skipped: no finished trial with a training time."
    front = pareto_front(df, ["_dev", "_sec"], ["max", "min"]).sort_values("_sec")
    fig, (ax,) = _new_figure(1, width=9.5, height=4.8)
    labels = list(dict.fromkeys(df["label"]))
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    for label, group in df.groupby("label", sort=False):
        ax.errorbar(group["_sec"] / 60, group["_dev"], xerr=_half(group, "train_seconds") / 60,
                    yerr=_half(group, "dev_score"), fmt="o", ms=5, capsize=2,
                    color=colors[label], label=label)  # fmt: skip
    ax.step(front["_sec"] / 60, front["_dev"], where="post", color="black", lw=1.2, ls="--")
    ax.scatter(front["_sec"] / 60, front["_dev"], s=110, facecolors="none", edgecolors="black",
               label="Pareto front")  # fmt: skip
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("dev score")
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside right upper")
    return Figure(
        "dev_vs_time",
        "Dev score vs training time",
        f"All {len(df)} finished trials (configurations: mean over seeds, 95% intervals); "
        "circled: the Pareto front of the means (no trial is both better and faster).",
        _png(fig),
    )


def _fig_epochs(report: Report, top: int) -> Figure | str:
    ep = report.epochs
    if ep.empty or not {"trial_id", "epoch", "dev_score"} <= set(ep.columns):
        return "Dev score per epoch plot skipped: epochs.parquet is missing or empty."
    best = _top_trials(report, top)
    if "config_id" not in ep.columns:
        ep = ep.assign(config_id=ep["trial_id"])
    ep = ep[ep["config_id"].isin(best["config_id"])]
    if ep.empty:
        return "Dev score per epoch plot skipped: no epoch rows for the best trials."
    fig, (ax,) = _new_figure(1, width=7.5, height=4.2)
    for (_, r), color in zip(best.iterrows(), _colors(len(best)), strict=True):
        rows = ep[ep["config_id"] == r["config_id"]]
        if rows.empty:
            continue
        epochs = sorted(rows["epoch"].unique())
        intervals = [t_interval(numeric(rows[rows["epoch"] == e], "dev_score").tolist())
                     for e in epochs]  # fmt: skip
        half = [0.0 if math.isnan(i.high) else (i.high - i.low) / 2 for i in intervals]
        ax.errorbar(epochs, [i.mean for i in intervals], yerr=half, marker="o", capsize=3,
                    color=color, label=r["label"])  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev score")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return Figure(
        "dev_per_epoch",
        "Dev score per epoch",
        f"The best trial of the top {len(best)} variants (mean over seeds, 95% intervals).",
        _png(fig),
    )


def _fig_hyperparameters(report: Report, top: int) -> Figure | str:
    df = report.configs
    views = [(h, t) for h, t in (("lr", "learning rate"), ("batch_size", "batch size"), ("dropout", "dropout"))
             if h in df.columns and numeric(df, h).notna().any()]  # fmt: skip
    if not views:
        return "Hyperparameter plots skipped: the trials have no lr, batch_size or dropout column."
    fig, axes = _new_figure(len(views), width=4.0)
    dev, err = numeric(df, "dev_score"), _half(df, "dev_score")
    for ax, (h, title) in zip(axes, views, strict=True):
        x = numeric(df, h)
        if h == "batch_size":
            values = sorted(x.dropna().unique())
            pos = {v: i for i, v in enumerate(values)}
            jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(x))
            ax.errorbar([pos.get(v, np.nan) for v in x] + jitter, dev, yerr=err, fmt="o", ms=4,
                        alpha=0.8, capsize=2)  # fmt: skip
            means = [dev[x == v].mean() for v in values]
            ax.plot(
                range(len(values)), means, color="black", marker="_", ms=24, ls="none", label="mean"
            )
            ax.set_xticks(range(len(values)), [fmt_value(v) for v in values])
            ax.legend(fontsize=7)
        else:
            ax.errorbar(x, dev, yerr=err, fmt="o", ms=4, alpha=0.8, capsize=2)
            if h == "lr" and (x > 0).all():
                ax.set_xscale("log")
        constant = x.nunique() <= 1
        ax.set_title(f"dev score by {title}" + (" (constant)" if constant else ""))
        ax.set_xlabel(h)
        ax.set_ylabel("dev score")
        ax.grid(alpha=0.3)
    return Figure(
        "hyperparameters",
        "Dev score by learning rate, batch size and dropout",
        "Every finished trial (the BERTer paper's Figures 2-4); with seeds, the mean over them "
        "with the 95% interval.",
        _png(fig),
    )


def _fig_layerwise(report: Report, top: int) -> Figure | str:
    lw = report.layerwise
    if lw.empty:
        return "Layer-wise plot skipped: no per-layer scores (layer_scores or <metric>_layers) in the results."
    order = [*(task_label(c) for c in task_columns(report.finished)), "Dev score"]
    curves = sorted(
        dict.fromkeys(lw["curve"]), key=lambda c: order.index(c) if c in order else len(order)
    )
    fig, axes = _new_figure(len(curves), width=3.8)
    strategies = list(dict.fromkeys(lw["strategy"]))
    colors = dict(zip(strategies, _colors(len(strategies)), strict=True))
    for ax, curve in zip(axes, curves, strict=True):
        for _, r in lw[lw["curve"] == curve].iterrows():
            color = colors[r["strategy"]]
            errors = np.nan_to_num(np.asarray(r.get("errors", [0.0] * r["layers"]), dtype=float))
            ax.errorbar(np.arange(1, r["layers"] + 1), r["scores"], yerr=errors, marker="o",
                        ms=3, capsize=2, color=color)  # fmt: skip
            ax.scatter([r["best_layer"]], [r["best_score"]], marker="*", s=120, color=color,
                       edgecolors="black", zorder=3)  # fmt: skip
        ax.set_title(curve)
        ax.set_xlabel("exit layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score if every example exits here")
    handles = [Line2D([], [], color=colors[s], marker="o", ms=3, label=s) for s in strategies]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(strategies), fontsize=8)
    return Figure(
        "layerwise",
        "Score of every exit layer (best trial per strategy)",
        "Stars mark each curve's best layer: a star before the last layer means the curve peaks "
        "early (the convexity of BERT's layers). With seeds: the mean curve, 95% intervals.",
        _png(fig),
    )


def _fig_importance(report: Report, top: int) -> Figure | str | None:
    if not report.importance:
        return None  # the note says why
    names = list(report.importance)[::-1]
    fig, (ax,) = _new_figure(1, width=6.0, height=0.45 * len(names) + 1.2)
    ax.barh(names, [report.importance[n] for n in names], color="#4c72b0")
    ax.set_xlabel(f"importance for the dev score ({report.importance_evaluator})")
    ax.grid(alpha=0.3, axis="x")
    return Figure(
        "importance",
        "Hyperparameter importance",
        f"Optuna {report.importance_evaluator} importance over the finished trials.",
        _png(fig),
    )
