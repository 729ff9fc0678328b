"""The comparison report's numbers: which trials count, the best per variant, the ablation,
the early-exit operating point, layer-wise curves, and the ``Report`` that holds them.

``build_report`` reads a sweep's Parquet files (``berter.sweep.store.read_results``, the
same reader the sweep uses; local, s3://, gs:// or file://) and computes every table:

- a variant table shaped like Table 2 of the BERTer paper: the best finished trial of each
  variant (by dev score), its task metrics, training time, exit statistics and
  hyperparameters, sorted by dev score;
- an ablation view: per value of each variant axis, mean and best dev score and mean time;
- layer-wise score curves: per task, the score of every exit layer for the best trial of
  each strategy, to see whether the last layer wins or the curve peaks earlier;
- hyperparameter importance (Optuna, :mod:`berter.report.hyperparameters`).

Only finished trials (terminated, or stopped early by the scheduler) enter the tables; the
others are counted in a status line, so a sweep that is still running or was interrupted
can be reported on at any time. Figures are added by :mod:`berter.report.figures`, files
and the terminal view written by :mod:`berter.report.render`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from berter.config import AXES, variant_name
from berter.report.cells import DASH, as_list, finite, fmt, fmt_value, format_duration, numeric
from berter.report.hyperparameters import importance, shown_hyperparameters
from berter.sweep.store import read_results
from berter.sweep.study import load_study
from berter.tasks import TASKS, metric_column
from berter.variants import PAPER_TABLE2

FINISHED = ("terminated", "stopped-early")  # trials whose scores are final
STATUS_ORDER = ("terminated", "stopped-early", "running", "pending", "diverged", "error")

# Task -> its metric column in the results; Table 2's display names for the paper's three.
TASK_COLUMN = {name: metric_column(task) for name, task in TASKS.items()}
TASK_LABELS = {"sst_acc": "SST", "para_acc": "Paraphrase", "sts_corr": "STS"}

FASTEST_WITHIN = 0.01  # "fastest variant within 1 point of the best" (absolute dev score)
EXIT_TOLERANCE = 0.01  # early-exit operating point: dev_score_exit within 1% (relative)


def task_label(col: str) -> str:
    return TASK_LABELS.get(col, col)


def _label(row: pd.Series | dict) -> str:
    """A variant's display name: its paper row when it is one, else its short name."""
    preset = row.get("preset")
    if isinstance(preset, str) and preset:
        return preset
    variant = row.get("variant")
    return variant if isinstance(variant, str) and variant else variant_name(dict(row))


# ----------------------------------------------------------------------------- trials
def prepare_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Normalised copy: status lower-case ("unknown" if missing), a display label per trial."""
    df = trials.copy()
    status = df["status"] if "status" in df.columns else pd.Series("unknown", index=df.index)
    df["status"] = status.fillna("unknown").astype(str).str.strip().str.lower()
    if "variant" not in df.columns:
        df["variant"] = None
    missing = df["variant"].isna()
    if missing.any() and all(a in df.columns for a in AXES):
        df.loc[missing, "variant"] = [variant_name(dict(r)) for _, r in df[missing].iterrows()]
    df["label"] = [_label(r) for _, r in df.iterrows()] if len(df) else []
    return df


def finished_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials whose scores are final and finite: the ones the best-of tables compare."""
    done = trials[trials["status"].isin(FINISHED)]
    return done[np.isfinite(numeric(done, "dev_score"))]


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    counts = trials["status"].value_counts().to_dict()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    return {s: int(counts[s]) for s in order}


def best_per_variant(finished: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: its best trial by dev score (ties: faster, then lower trial_id),
    plus ``n_trials``; sorted by dev score, best first."""
    if finished.empty:
        return finished.assign(n_trials=pd.Series(dtype=int))
    df = finished.assign(
        _dev=numeric(finished, "dev_score"), _sec=numeric(finished, "train_seconds")
    )
    df = df.sort_values(
        ["_dev", "_sec", "trial_id"], ascending=[False, True, True], na_position="last"
    )
    best = df.drop_duplicates("variant", keep="first").copy()
    best["n_trials"] = best["variant"].map(finished["variant"].value_counts()).astype(int)
    return best.drop(columns=["_dev", "_sec"]).reset_index(drop=True)


def ablation(finished: pd.DataFrame) -> pd.DataFrame:
    """Per axis value: number of finished trials, mean and best dev score, mean time."""
    rows = []
    df = finished.assign(
        _dev=numeric(finished, "dev_score"), _sec=numeric(finished, "train_seconds")
    )
    for axis in AXES:
        if axis not in df.columns:
            continue
        for value, group in df.groupby(axis, dropna=False, sort=False):
            rows.append({
                "axis": axis, "value": DASH if pd.isna(value) else str(value), "trials": len(group),
                "mean_dev": group["_dev"].mean(), "best_dev": group["_dev"].max(),
                "mean_seconds": group["_sec"].mean(),
            })  # fmt: skip
    out = pd.DataFrame(
        rows, columns=["axis", "value", "trials", "mean_dev", "best_dev", "mean_seconds"]
    )
    if out.empty:
        return out
    order = {a: i for i, a in enumerate(AXES)}
    out["_axis"] = out["axis"].map(order)
    out = out.sort_values(["_axis", "mean_dev"], ascending=[True, False])
    return out.drop(columns="_axis").reset_index(drop=True)


def early_exit_point(finished: pd.DataFrame, tolerance: float = EXIT_TOLERANCE) -> pd.Series | None:
    """The best early-exit operating point: among finished trials that exit early
    (layers_saved > 0) with dev_score_exit >= (1 - tolerance) * dev_score, the one that saves
    the most layers (ties: higher dev_score_exit). None when no trial qualifies."""
    dev, dev_exit, saved = (
        numeric(finished, c) for c in ("dev_score", "dev_score_exit", "layers_saved")
    )
    ok = np.isfinite(dev_exit) & (saved > 0) & (dev_exit >= dev - tolerance * dev.abs())
    if not ok.any():
        return None
    cand = finished[ok].assign(_saved=saved[ok], _exit=dev_exit[ok])
    return cand.sort_values(["_saved", "_exit", "trial_id"], ascending=[False, False, True]).iloc[0]


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
    """Per-layer scores of one trial: {task label: [score at layer 1..n]}, plus "Dev score".

    Per task: the ``<metric>_layers`` column, else the fixed-layer curve a trial without an
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


def layerwise(finished: pd.DataFrame, exits: pd.DataFrame) -> pd.DataFrame:
    """Per strategy (its best trial) and curve: the best layer, its score and the last's."""
    rows = []
    if finished.empty or "strategy" not in finished.columns:
        return pd.DataFrame(columns=["strategy", "label", "trial_id", "curve", "scores"])
    cols = task_columns(finished)
    ranked = finished.assign(_dev=numeric(finished, "dev_score")).sort_values(
        ["_dev", "trial_id"], ascending=[False, True]
    )
    for strategy, group in ranked.groupby("strategy", sort=False):
        trial = group.iloc[0]
        for curve, scores in layer_curves(trial, exits, cols).items():
            finite_scores = [s if math.isfinite(s) else -math.inf for s in scores]
            best = int(np.argmax(finite_scores))
            rows.append({
                "strategy": strategy, "label": trial["label"], "trial_id": trial["trial_id"],
                "curve": curve, "scores": scores, "layers": len(scores),
                "best_layer": best + 1, "best_score": scores[best], "last_score": scores[-1],
                "peaks_early": best + 1 < len(scores) and scores[best] > scores[-1],
            })  # fmt: skip
    return pd.DataFrame(rows)


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


@dataclass
class Report:
    source: str
    name: str
    trials: pd.DataFrame  # every trial row read (normalised status, "label")
    finished: pd.DataFrame
    epochs: pd.DataFrame
    exits: pd.DataFrame
    status_counts: dict[str, int]
    variants: pd.DataFrame  # best_per_variant: raw values, sorted by dev score
    hyperparameters: list[str]  # shown in the variant table
    ablation: pd.DataFrame
    layerwise: pd.DataFrame
    importance: dict[str, float]
    importance_evaluator: str | None
    summary: str
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    # -- formatted tables (strings), shared by the terminal, Markdown and HTML
    def variant_table(self) -> pd.DataFrame:
        presets = self.variants.get("preset", pd.Series(dtype=str)).dropna()
        with_paper = any(p in PAPER_TABLE2 for p in presets)
        rows = []
        for _, r in self.variants.iterrows():
            row = {"Variant": r["label"], "Dev Score": fmt(r.get("dev_score"))}
            for col in task_columns(self.finished):
                row[task_label(col)] = fmt(r.get(col))
            row["Training Time"] = format_duration(r.get("train_seconds"))
            row["Avg Exit Layer"] = _exit_layer(r)
            saved = r.get("layers_saved")
            row["Layers Saved"] = f"{100 * float(saved):.1f}%" if finite(saved) else DASH
            speed = r.get("speedup_wall")
            row["Wall Speedup"] = f"{float(speed):.2f}x" if finite(speed) else DASH
            if with_paper:
                ref = PAPER_TABLE2.get(r.get("preset"))
                row["Paper Dev"] = fmt(ref["dev_score"]) if ref else DASH
            row["Trials"] = str(int(r["n_trials"]))
            row["Best Trial"] = str(r["trial_id"])
            for h in self.hyperparameters:
                row[h] = fmt_value(r.get(h))
            rows.append(row)
        return pd.DataFrame(rows)

    def ablation_table(self) -> pd.DataFrame:
        return pd.DataFrame({
            "Axis": self.ablation["axis"],
            "Value": self.ablation["value"],
            "Trials": self.ablation["trials"].astype(int).astype(str),
            "Mean Dev": self.ablation["mean_dev"].map(fmt),
            "Best Dev": self.ablation["best_dev"].map(fmt),
            "Mean Time": self.ablation["mean_seconds"].map(format_duration),
        })  # fmt: skip

    def layerwise_table(self) -> pd.DataFrame:
        if self.layerwise.empty:
            return pd.DataFrame()
        lw = self.layerwise
        return pd.DataFrame({
            "Strategy": lw["strategy"],
            "Trial": lw["trial_id"],
            "Curve": lw["curve"],
            "Best Layer": [f"{b} of {n}" for b, n in zip(lw["best_layer"], lw["layers"], strict=True)],
            "Best Score": lw["best_score"].map(fmt),
            "Last Layer": lw["last_score"].map(fmt),
            "Peaks Early": lw["peaks_early"].map(lambda x: "yes" if x else "no"),
        })  # fmt: skip

    def importance_table(self) -> pd.DataFrame:
        return pd.DataFrame({
            "Parameter": list(self.importance),
            "Importance": [f"{v:.3f}" for v in self.importance.values()],
        })  # fmt: skip

    def status_line(self) -> str:
        total = sum(self.status_counts.values())
        parts = ", ".join(f"{n} {s}" for s, n in self.status_counts.items())
        return (
            f"{total} trial{'s' if total != 1 else ''}{f' ({parts})' if parts else ''}; "
            f"{len(self.finished)} finished with a dev score enter the tables."
        )


def _exit_layer(r: pd.Series) -> str:
    layer, n = r.get("avg_exit_layer"), r.get("num_layers")
    if not finite(layer):
        return DASH
    return f"{float(layer):.2f}/{int(n)}" if finite(n) else f"{float(layer):.2f}"


def headline(variants: pd.DataFrame, finished: pd.DataFrame, counts: dict[str, int]) -> str:
    """The paragraph at the top: best variant, fastest one within a point, best exit point."""
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
        + (f" ({tasks})" if tasks else "")
        + f", trained in {format_duration(best.get('train_seconds'))} (trial {best['trial_id']})."
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
    point = early_exit_point(finished)
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
            f"{100 * EXIT_TOLERANCE:.0f}% of full depth): {point['label']} (trial {point['trial_id']}) "
            f"exits at layer {float(point['avg_exit_layer']):.2f}{of_n} on average, saving "
            f"{100 * float(point['layers_saved']):.1f}% of the layers, at dev score "
            f"{fmt(point['dev_score_exit'])} vs {fmt(point['dev_score'])} at full depth."
        )
    unfinished = total - len(finished)
    text.append(
        f"{len(finished)} of {total} trials finished with a dev score"
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
    variants = best_per_variant(finished)
    imp, evaluator, imp_note = importance(finished, load_study(path))
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
        hyperparameters=shown_hyperparameters(finished),
        ablation=ablation(finished),
        layerwise=layerwise(finished, exits),
        importance=imp,
        importance_evaluator=evaluator,
        summary=headline(variants, finished, counts),
    )
    if imp_note:
        report.notes.append(imp_note)
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
