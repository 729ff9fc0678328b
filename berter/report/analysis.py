"""The comparison report's numbers: which runs count, the best configuration per variant, the
ablation, the early-exit table, layer-wise curves, and the ``Report`` that holds them.

``build_report`` reads a sweep's Parquet files (``berter.sweep.store.read_results``, the
same reader the sweep uses; local, s3://, gs:// or file://) and computes every table:

- a variant table shaped like Table 2 of the BERTer paper: the best finished configuration
  of each variant (by mean dev score over its seeds), its task metrics, training time, exit
  statistics and hyperparameters, sorted by dev score;
- the differences of each variant's row from the Baseline row, paired by seed;
- an ablation view: per value of each variant axis, the mean over its runs, per seed;
- an early-exit table: the variants that exit early, at their operating points;
- layer-wise score curves: per task, the score of every exit layer for the best
  configuration of each strategy, to see whether the last layer wins or it peaks earlier;
- hyperparameter importance (Optuna, :mod:`berter.report.hyperparameters`).

Every number over seeds (mean, 95% t-interval, paired bootstrap difference from the
Baseline) comes from :mod:`berter.report.stats`, the functions ``berter.results`` gives
pandas users. A sweep without ``--seeds`` has one seed per configuration: its cells say
"n=1" instead of an interval.

Only finished runs (terminated, or stopped early by the scheduler) enter the tables; the
others are counted in a status line, so a sweep that is still running or was interrupted
can be reported on at any time. Figures are added by :mod:`berter.report.figures`, files
and the terminal view written by :mod:`berter.report.render`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from berter.config import AXES, variant_name
from berter.report.cells import (
    DASH,
    finite,
    fmt,
    fmt_diff,
    fmt_interval,
    fmt_value,
    format_duration,
    numeric,
)
from berter.report.hyperparameters import importance, shown_hyperparameters
from berter.report.stats import (
    BASELINE,
    FINISHED,
    baseline_runs,
)
from berter.report.tables import (
    EXIT_TOLERANCE,
    ablation,
    best_per_variant,
    configurations,
    differences,
    early_exit_point,
    layerwise,
    report_metrics,
    task_columns,
    task_label,
)
from berter.sweep.store import read_results
from berter.sweep.study import load_study
from berter.variants import PAPER_TABLE2

STATUS_ORDER = ("terminated", "stopped-early", "running", "pending", "diverged", "error")

FASTEST_WITHIN = 0.01  # "fastest variant within 1 point of the best" (absolute dev score)


def _label(row: pd.Series | dict) -> str:
    """A variant's display name: its paper row when it is one, else its short name."""
    preset = row.get("preset")
    if isinstance(preset, str) and preset:
        return preset
    variant = row.get("variant")
    return variant if isinstance(variant, str) and variant else variant_name(dict(row))


# ----------------------------------------------------------------------------- runs
def prepare_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Normalised copy: status lower-case ("unknown" if missing), a display label per run,
    and ``config_id`` (a run of results written before seeds is its own configuration)."""
    df = trials.copy()
    status = df["status"] if "status" in df.columns else pd.Series("unknown", index=df.index)
    df["status"] = status.fillna("unknown").astype(str).str.strip().str.lower()
    if "config_id" not in df.columns:
        df["config_id"] = df["trial_id"]
    df["config_id"] = df["config_id"].fillna(df["trial_id"])
    if "variant" not in df.columns:
        df["variant"] = None
    missing = df["variant"].isna()
    if missing.any() and all(a in df.columns for a in AXES):
        df.loc[missing, "variant"] = [variant_name(dict(r)) for _, r in df[missing].iterrows()]
    df["label"] = [_label(r) for _, r in df.iterrows()] if len(df) else []
    return df


def finished_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Runs whose scores are final and finite: the ones the tables compare."""
    done = trials[trials["status"].isin(FINISHED)]
    return done[np.isfinite(numeric(done, "dev_score"))]


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    counts = trials["status"].value_counts().to_dict()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    return {s: int(counts[s]) for s in order}


# ----------------------------------------------------------------------------- report
@dataclass
class Figure:
    name: str  # file stem: <name>.png next to the report
    title: str
    caption: str
    png: bytes

    @property
    def filename(self) -> str:
        return f"{self.name}.png"


def _pct(x: float) -> str:
    return f"{100 * float(x):.1f}%"


def _speed(x: float) -> str:
    return f"{float(x):.2f}x"


def _layer(x: float) -> str:
    return f"{float(x):.2f}"


@dataclass
class Report:
    source: str
    name: str
    trials: pd.DataFrame  # every run read (normalised status, "label", "config_id")
    finished: pd.DataFrame  # finished runs
    epochs: pd.DataFrame
    exits: pd.DataFrame
    status_counts: dict[str, int]
    variants: pd.DataFrame  # best_per_variant: means and intervals, sorted by dev score
    hyperparameters: list[str]  # shown in the variant table
    ablation: pd.DataFrame
    layerwise: pd.DataFrame
    importance: dict[str, float]
    importance_evaluator: str | None
    summary: str
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    configs: pd.DataFrame = field(default_factory=pd.DataFrame)  # per configuration, ranked
    differences: pd.DataFrame = field(default_factory=pd.DataFrame)  # per config_id, from Baseline
    baseline: str | None = None  # the Baseline's config_id (None: no Baseline in the results)

    # -- formatted tables (strings), shared by the terminal, Markdown and HTML
    def _diff(self, r: pd.Series, metric: str, show: Any = fmt) -> str:
        """A row's paired difference from the Baseline, "baseline" on the Baseline's row."""
        if r["config_id"] == self.baseline:
            return "baseline"
        if self.differences.empty or r["config_id"] not in self.differences.index:
            return DASH
        return fmt_diff(self.differences.loc[r["config_id"]], metric, show)

    def variant_table(self) -> pd.DataFrame:
        presets = self.variants.get("preset", pd.Series(dtype=str)).dropna()
        with_paper = any(p in PAPER_TABLE2 for p in presets)
        rows = []
        for _, r in self.variants.iterrows():
            row = {"Variant": r["label"], "Dev Score": fmt_interval(r, "dev_score")}
            for col in task_columns(self.finished):
                row[task_label(col)] = fmt_interval(r, col)
            row["Training Time"] = fmt_interval(r, "train_seconds", format_duration)
            row["Avg Exit Layer"] = _exit_layer(r)
            row["Layers Saved"] = fmt_interval(r, "layers_saved", _pct)
            row["Wall Speedup"] = fmt_interval(r, "speedup_wall", _speed)
            if self.baseline is not None:
                row["Dev vs Baseline"] = self._diff(r, "dev_score")
            if with_paper:
                ref = PAPER_TABLE2.get(r.get("preset"))
                row["Paper Dev"] = fmt(ref["dev_score"]) if ref else DASH
            row["Trials"] = str(int(r["n_trials"]))
            row["Seeds"] = str(int(r["n_seeds"]))
            row["Best Trial"] = str(r["config_id"])
            for h in self.hyperparameters:
                row[h] = fmt_value(r.get(h))
            rows.append(row)
        return pd.DataFrame(rows)

    def differences_table(self) -> pd.DataFrame:
        """Per variant (its best configuration), the paired difference of every summarised
        metric from the Baseline; empty without a Baseline."""
        if self.baseline is None:
            return pd.DataFrame()
        rows = []
        for _, r in self.variants.iterrows():
            row = {"Variant": r["label"], "Dev Score": self._diff(r, "dev_score")}
            for col in task_columns(self.finished):
                row[task_label(col)] = self._diff(r, col)
            row["Training Time"] = self._diff(r, "train_seconds", format_duration)
            row["Avg Exit Layer"] = self._diff(r, "avg_exit_layer", _layer)
            row["Wall Speedup"] = self._diff(r, "speedup_wall", _speed)
            pairs = (
                self.differences.loc[r["config_id"]].get("dev_score_diff_n")
                if r["config_id"] in self.differences.index
                else None
            )
            row["Paired Seeds"] = str(int(pairs)) if finite(pairs) else DASH
            rows.append(row)
        return pd.DataFrame(rows)

    def early_exit_table(self) -> pd.DataFrame:
        """The variants that exit early (and the Baseline, for reference), at their
        calibrated operating points: dev score at full depth and at the exits, each task's
        metric at the exits, average exit layer, layers saved, wall-clock speedup."""
        if self.variants.empty or "exit_method" not in self.variants.columns:
            return pd.DataFrame()
        exits = self.variants["exit_method"] != "none"
        if not exits.any():
            return pd.DataFrame()
        early = self.variants[exits | (self.variants["config_id"] == self.baseline)]
        rows = []
        for _, r in early.iterrows():
            row = {"Variant": r["label"], "Exit": str(r["exit_method"]),
                   "Dev Score": fmt_interval(r, "dev_score"),
                   "Dev at Exit": fmt_interval(r, "dev_score_exit")}  # fmt: skip
            for col in task_columns(self.finished):
                row[f"{task_label(col)} at Exit"] = fmt_interval(r, f"{col}_exit")
            row["Avg Exit Layer"] = _exit_layer(r)
            row["Layers Saved"] = fmt_interval(r, "layers_saved", _pct)
            row["Wall Speedup"] = fmt_interval(r, "speedup_wall", _speed)
            if self.baseline is not None:
                row["Exit Dev vs Baseline"] = self._diff(r, "dev_score_exit")
            rows.append(row)
        return pd.DataFrame(rows)

    def ablation_table(self) -> pd.DataFrame:
        rows = []
        for _, r in self.ablation.iterrows():
            row = {"Axis": r["axis"], "Value": r["value"], "Trials": str(int(r["trials"])),
                   "Mean Dev": fmt_interval(r, "dev_score")}  # fmt: skip
            for col in task_columns(self.finished):
                row[task_label(col)] = fmt_interval(r, col)
            row["Avg Exit Layer"] = fmt_interval(r, "avg_exit_layer", _layer)
            row["Wall Speedup"] = fmt_interval(r, "speedup_wall", _speed)
            row["Mean Time"] = fmt_interval(r, "train_seconds", format_duration)
            if "dev_score_diff" in self.ablation.columns:
                row["Dev vs Baseline Value"] = (
                    "baseline" if r["baseline"] else fmt_diff(r, "dev_score")
                )
            row["Best Dev"] = fmt(r["best_dev"])
            rows.append(row)
        return pd.DataFrame(rows)

    def layerwise_table(self) -> pd.DataFrame:
        if self.layerwise.empty:
            return pd.DataFrame()
        rows = []
        for _, r in self.layerwise.iterrows():
            best, last = r["best_layer"] - 1, r["layers"] - 1
            cell = {  # the two layers' means with their interval bounds, as fmt_interval reads
                "best_score": r["best_score"], "best_score_n": r["n"],
                "best_score_low": r["scores"][best] - r["errors"][best],
                "best_score_high": r["scores"][best] + r["errors"][best],
                "last_score": r["last_score"], "last_score_n": r["n"],
                "last_score_low": r["scores"][last] - r["errors"][last],
                "last_score_high": r["scores"][last] + r["errors"][last],
            }  # fmt: skip
            rows.append({
                "Strategy": r["strategy"], "Trial": r["trial_id"], "Curve": r["curve"],
                "Best Layer": f"{r['best_layer']} of {r['layers']}",
                "Best Score": fmt_interval(cell, "best_score"),
                "Last Layer": fmt_interval(cell, "last_score"),
                "Peaks Early": "yes" if r["peaks_early"] else "no",
            })  # fmt: skip
        return pd.DataFrame(rows)

    def importance_table(self) -> pd.DataFrame:
        return pd.DataFrame({
            "Parameter": list(self.importance),
            "Importance": [f"{v:.3f}" for v in self.importance.values()],
        })  # fmt: skip

    def status_line(self) -> str:
        total = sum(self.status_counts.values())
        parts = ", ".join(f"{n} {s}" for s, n in self.status_counts.items())
        configs = self.trials["config_id"].nunique() if "config_id" in self.trials else total
        if configs == total:
            return (
                f"{total} trial{'s' if total != 1 else ''}{f' ({parts})' if parts else ''}; "
                f"{len(self.finished)} finished with a dev score enter the tables."
            )
        return (
            f"{configs} trials (configurations) of {total} runs, one per seed"
            f"{f' ({parts})' if parts else ''}; {len(self.finished)} finished runs with a dev "
            "score enter the tables."
        )


def _exit_layer(r: pd.Series) -> str:
    n = r.get("num_layers")
    of_n = (lambda x: f"{float(x):.2f}/{int(n)}") if finite(n) else _layer
    return fmt_interval(r, "avg_exit_layer", of_n, _layer)


def _with_interval(r: pd.Series, metric: str) -> str:
    """`` ± h (95% CI, n seeds)`` after a mean over seeds, or nothing for one seed."""
    low, high, n = (r.get(f"{metric}{s}") for s in ("_low", "_high", "_n"))
    if not (finite(low) and finite(high)):
        return ""
    return f" ± {(float(high) - float(low)) / 2:.3f} (95% CI over {int(n)} seeds)"


def headline(
    variants: pd.DataFrame, configs: pd.DataFrame, finished: pd.DataFrame, counts: dict[str, int]
) -> str:
    """The paragraph at the top: best variant, fastest one within a point, best exit point
    (means over seeds, per configuration)."""
    total = sum(counts.values())
    if variants.empty:
        return (
            f"No finished trial yet: {total} trial{'s' if total != 1 else ''} in the results "
            f"({', '.join(f'{n} {s}' for s, n in counts.items()) or 'none'})."
        )
    best = variants.iloc[0]
    tasks = ", ".join(f"{task_label(c)} {fmt(best.get(c))}" for c in task_columns(finished))
    text = [
        f"Best variant: {best['label']} with dev score {fmt(best['dev_score'])}"
        + _with_interval(best, "dev_score")
        + (f" ({tasks})" if tasks else "")
        + f", trained in {format_duration(best.get('train_seconds'))} (trial {best['config_id']})."
    ]
    dev, sec = numeric(variants, "dev_score"), numeric(variants, "train_seconds")
    close = variants[(dev >= float(best["dev_score"]) - FASTEST_WITHIN) & np.isfinite(sec)]
    if not close.empty:
        fast = close.loc[numeric(close, "train_seconds").idxmin()]
        if fast["variant"] == best["variant"]:
            text.append(f"No other variant within {FASTEST_WITHIN:.2f} of it trains faster.")
        else:
            saving = 1 - float(fast["train_seconds"]) / float(best["train_seconds"])
            text.append(
                f"Fastest variant within {FASTEST_WITHIN:.2f} of the best: {fast['label']}, dev score "
                f"{fmt(fast['dev_score'])} in {format_duration(fast['train_seconds'])}"
                + (f" ({100 * saving:.0f}% less time)." if saving > 0 else ".")
            )
    point = early_exit_point(configs)
    if point is None:
        text.append(
            f"No trial exits early while keeping its dev score within {100 * EXIT_TOLERANCE:.0f}% "
            f"of full depth."
        )
    else:
        n = point.get("num_layers")
        of_n = f" of {int(n)}" if finite(n) else ""
        text.append(
            f"Best early-exit operating point (most layers saved with the exit dev score within "
            f"{100 * EXIT_TOLERANCE:.0f}% of full depth): {point['label']} (trial {point['config_id']}) "
            f"exits at layer {float(point['avg_exit_layer']):.2f}{of_n} on average, saving "
            f"{100 * float(point['layers_saved']):.1f}% of the layers, at dev score "
            f"{fmt(point['dev_score_exit'])} vs {fmt(point['dev_score'])} at full depth."
        )
    unfinished = total - len(finished)
    text.append(
        f"{len(finished)} of {total} {'trials' if len(configs) == len(finished) else 'runs'} "
        "finished with a dev score"
        + (f"; {unfinished} running, stopped or failed are left out." if unfinished else ".")
    )
    return " ".join(text)


def build_report(path: str | Path) -> Report:
    """Read a sweep's results (local directory or URI) and compute every table; a missing
    directory or trials.parquet is a DataError. Figures: :func:`berter.report.figures.add_figures`."""
    tables = read_results(path, must_exist=True)
    trials = prepare_trials(tables["trials"])
    epochs, exits = tables["epochs"], tables["exits"]
    finished = finished_trials(trials)
    counts = status_counts(trials)
    metrics = report_metrics(finished)
    configs = configurations(finished, metrics)
    variants = best_per_variant(configs)
    base = baseline_runs(finished) if not finished.empty else finished
    imp, evaluator, imp_note = importance(configs, load_study(path))
    name = str(path).rstrip("/").rsplit("/", 1)[-1] or str(path)
    report = Report(
        source=str(path),
        name=name,
        trials=trials,
        finished=finished,
        epochs=epochs,
        exits=exits,
        status_counts=counts,
        variants=variants,
        hyperparameters=shown_hyperparameters(configs),
        ablation=ablation(finished, configs, metrics),
        layerwise=layerwise(finished, configs, exits),
        importance=imp,
        importance_evaluator=evaluator,
        summary=headline(variants, configs, finished, counts),
        configs=configs,
        differences=differences(finished, variants, base, metrics),
        baseline=str(base["config_id"].iloc[0]) if not base.empty else None,
    )
    if imp_note:
        report.notes.append(imp_note)
    if report.baseline is None and not finished.empty:
        report.notes.append(
            f"No {BASELINE} row in the results: the tables show no differences from it "
            "(add the Baseline variant to the sweep to compare against it)."
        )
    if not report.layerwise.empty:
        tasks = [task_label(c) for c in task_columns(finished)]
        lacking = [
            str(strategy)
            for strategy, group in report.layerwise.groupby("strategy", sort=False)
            if set(tasks) - set(group["curve"])
        ]
        if lacking:
            wanted = ", ".join(f"{c}_layers" for c in task_columns(finished))
            report.notes.append(
                f"Layer-wise curves: no per-task layer scores for the best trial of {', '.join(lacking)} "
                f"(the results have no {wanted} columns; only trials without an exit method fall back "
                "to the fixed-layer curve in exits.parquet)."
            )
    return report
