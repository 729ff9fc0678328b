"""The comparison report of a sweep: ``python sweeps/report.py results/<name>``.

Reads the Parquet files a sweep writes (``trials``, ``epochs``, ``exits``; see
:mod:`berter.results`) from a local directory or an s3:// / gs:// / file:// URI and builds:

- a variant table shaped like Table 2 of the BERTer paper: the best finished trial of each
  variant (by dev score), its task metrics, training time, exit statistics and
  hyperparameters, sorted by dev score;
- an ablation view: per value of each variant axis, mean and best dev score and mean time;
- trade-off plots: task metric vs average exit layer, dev score vs training time with the
  Pareto front, dev score per epoch, and dev score by learning rate, batch size and dropout;
- layer-wise score curves: per task, the score of every exit layer for the best trial of
  each strategy, to see whether the last layer wins or the curve peaks earlier;
- hyperparameter importance (Optuna) over the hyperparameters that vary.

Only finished trials (terminated, or stopped early by the scheduler) enter the tables; the
others are counted in a status line, so a sweep that is still running or was interrupted
can be reported on at any time. The report is written as report.md and report.html with
PNG figures next to them.

Reading uses pyarrow's filesystems directly rather than ``berter.results.read_results``:
the report must tell a missing directory from a missing or unreadable file (the sweep's
reader returns empty tables for both), and it needs neither Ray nor torch.
"""

from __future__ import annotations

import argparse
import html
import io
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from berter.config import AXES, variant_name
from berter.errors import ArgumentParser, BerterError, DataError

FILES = {"trials": "trials.parquet", "epochs": "epochs.parquet", "exits": "exits.parquet"}
FINISHED = ("terminated", "stopped-early")  # trials whose scores are final
STATUS_ORDER = ("terminated", "stopped-early", "running", "pending", "diverged", "error")

# Task metric columns -> display names (Table 2's headers). Other tasks use their column.
TASK_LABELS = {"sst_acc": "SST", "para_acc": "Paraphrase", "sts_corr": "STS"}
TASK_COLUMN = {"sst": "sst_acc", "para": "para_acc", "sts": "sts_corr"}

# Hyperparameters of a trial (not data settings); the table shows the ones that vary.
HYPERPARAMETERS = (
    "lr", "batch_size", "dropout", "epochs", "optimizer", "weight_decay", "warmup_ratio",
    "grad_clip", "ema_decay", "layer_lr_decay", "task_weights", "smart_lambda", "smart_step",
    "smart_eps", "smart_steps", "cos_margin", "slf_fraction", "lte_lr", "lambda_lr", "patience",
    "exit_distill", "distill_temperature", "exit_threshold", "exit_tolerance", "exit_per_layer",
    "exit_confidence", "slf_embeddings", "exit_module_trained_only",
)  # fmt: skip
PAPER_HYPERPARAMETERS = ("lr", "batch_size", "dropout", "epochs")  # shown when none vary

FASTEST_WITHIN = 0.01  # "fastest variant within 1 point of the best" (absolute dev score)
EXIT_TOLERANCE = 0.01  # early-exit operating point: dev_score_exit within 1% (relative)
MIN_IMPORTANCE_TRIALS = 5
TOP_VARIANTS = 6  # best variants drawn in the per-epoch and exit trade-off plots
DASH = "—"


# ----------------------------------------------------------------------------- reading
def _filesystem(path: str | Path) -> tuple[Any, str, Path | None]:
    """(pyarrow filesystem, path inside it, local directory or None) of a results path."""
    import pyarrow.fs as pafs

    text = str(path)
    if "://" not in text:
        local = Path(text).expanduser().resolve()
        return pafs.LocalFileSystem(), str(local), local
    try:
        fs, inner = _from_uri(text)
    except (OSError, ValueError) as exc:  # unknown scheme, no credentials, bad bucket name
        raise DataError(f"cannot open results {text}: {_one_line(exc)}") from None
    local = Path(inner) if isinstance(fs, pafs.LocalFileSystem) else None
    return fs, inner.rstrip("/"), local


def _from_uri(uri: str) -> tuple[Any, str]:
    """pyarrow's filesystem for a URI (s3://, gs://, file://, ...) and the path inside it."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def read_tables(path: str | Path) -> dict[str, pd.DataFrame]:
    """The sweep's tables; trials.parquet is required, epochs/exits may be missing (empty).

    Raises DataError naming the path when the directory or trials.parquet is missing or a
    file cannot be read as Parquet.
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, root, _ = _filesystem(path)
    out: dict[str, pd.DataFrame] = {}
    for key, name in FILES.items():
        where = f"{str(path).rstrip('/')}/{name}"
        try:
            info = fs.get_file_info(f"{root}/{name}")
            if info.type == pafs.FileType.NotFound:
                if key != "trials":
                    out[key] = pd.DataFrame()
                    continue
                kind = fs.get_file_info(root).type
                if kind == pafs.FileType.NotFound:
                    raise DataError(f"results directory not found: {path}")
                if kind == pafs.FileType.File:
                    raise DataError(
                        f"{path} is a file: pass the results directory holding trials.parquet"
                    )
                raise DataError(f"no trials.parquet in {path} (has the sweep written any trial?)")
            with fs.open_input_file(f"{root}/{name}") as f:
                out[key] = pq.read_table(f).to_pandas()
        except DataError:
            raise
        except Exception as exc:  # ArrowInvalid, OSError, permission, truncated file
            raise DataError(f"cannot read {where}: {_one_line(exc)}") from None
    if "trial_id" not in out["trials"].columns:
        raise DataError(f"{path}/trials.parquet has no trial_id column: not a sweep results file")
    return out


# ----------------------------------------------------------------------------- helpers
def format_duration(seconds: Any) -> str:
    """Seconds as hh:mm:ss (hours may exceed 24); missing -> a dash."""
    if not _finite(seconds):
        return DASH
    total = int(round(float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{float(x):.{digits}f}" if _finite(x) else DASH


def _fmt_value(x: Any) -> str:
    """A hyperparameter value: integers plain, floats with 3 significant digits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and float(x).is_integer()):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.2e}" if abs(float(x)) < 1e-3 else f"{float(x):.3g}"
    return str(x)


def _as_list(x: Any) -> list[float]:
    if x is None or isinstance(x, (float, str)):
        return []
    try:
        return [float(v) for v in x]
    except TypeError:
        return []


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, or NaNs when the file does not have it."""
    if name in df.columns:
        return pd.to_numeric(df[name], errors="coerce")
    return pd.Series(np.nan, index=df.index, dtype=float)


def _label(row: pd.Series | dict) -> str:
    """A variant's display name: its paper row when it is one, else its short name."""
    preset = row.get("preset")
    if isinstance(preset, str) and preset:
        return preset
    variant = row.get("variant")
    return variant if isinstance(variant, str) and variant else variant_name(dict(row))


def _paper_table() -> dict[str, dict[str, Any]]:
    try:
        from berter.variants import PAPER_TABLE2
    except ImportError:
        return {}
    return PAPER_TABLE2


def _log_scale_params() -> set[str]:
    """Config fields a sweep searches on a log scale (from the search space table)."""
    try:
        from berter.search import SPACE
    except ImportError:
        return {"lr", "lte_lr", "lambda_lr", "smart_lambda", "smart_step", "smart_eps"}
    return {p.field for p in SPACE if p.kind == "loguniform"}


def _choice_params() -> set[str]:
    try:
        from berter.search import SPACE
    except ImportError:
        return {"batch_size", "optimizer"}
    return {p.field for p in SPACE if p.kind == "choice"}


# ----------------------------------------------------------------------------- analysis
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
    return done[np.isfinite(_col(done, "dev_score"))]


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    counts = trials["status"].value_counts().to_dict()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    return {s: int(counts[s]) for s in order}


def best_per_variant(finished: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: its best trial by dev score (ties: faster, then lower trial_id),
    plus ``n_trials``; sorted by dev score, best first."""
    if finished.empty:
        return finished.assign(n_trials=pd.Series(dtype=int))
    df = finished.assign(_dev=_col(finished, "dev_score"), _sec=_col(finished, "train_seconds"))
    df = df.sort_values(
        ["_dev", "_sec", "trial_id"], ascending=[False, True, True], na_position="last"
    )
    best = df.drop_duplicates("variant", keep="first").copy()
    best["n_trials"] = best["variant"].map(finished["variant"].value_counts()).astype(int)
    return best.drop(columns=["_dev", "_sec"]).reset_index(drop=True)


def varying_hyperparameters(finished: pd.DataFrame) -> list[str]:
    """Hyperparameters with more than one value among the finished trials."""
    return [
        h for h in HYPERPARAMETERS if h in finished.columns and finished[h].nunique(dropna=True) > 1
    ]


def ablation(finished: pd.DataFrame) -> pd.DataFrame:
    """Per axis value: number of finished trials, mean and best dev score, mean time."""
    rows = []
    df = finished.assign(_dev=_col(finished, "dev_score"), _sec=_col(finished, "train_seconds"))
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
        _col(finished, c) for c in ("dev_score", "dev_score_exit", "layers_saved")
    )
    ok = np.isfinite(dev_exit) & (saved > 0) & (dev_exit >= dev - tolerance * dev.abs())
    if not ok.any():
        return None
    cand = finished[ok].assign(_saved=saved[ok], _exit=dev_exit[ok])
    return cand.sort_values(["_saved", "_exit", "trial_id"], ascending=[False, False, True]).iloc[0]


def task_columns(trials: pd.DataFrame) -> list[str]:
    """Task metric columns with values in these trials, Table 2's three first (a GLUE sweep's
    files still have empty sst_acc/para_acc/sts_corr columns)."""
    known = [c for c in TASK_LABELS if c in trials.columns]
    extra = sorted(
        c for c in trials.columns
        if (c.endswith("_acc") or c.endswith("_corr")) and c not in known
        and pd.api.types.is_numeric_dtype(trials[c])
    )  # fmt: skip
    return [c for c in known + extra if _col(trials, c).notna().any()]


def _task_label(col: str) -> str:
    return TASK_LABELS.get(col, col)


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
        values = _as_list(trial.get(f"{col}_layers"))
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
            out[_task_label(col)] = values
    dev = _as_list(trial.get("layer_scores"))
    if dev:
        out["Dev score"] = dev
    return out


def layerwise(finished: pd.DataFrame, exits: pd.DataFrame) -> pd.DataFrame:
    """Per strategy (its best trial) and curve: the best layer, its score and the last's."""
    rows = []
    if finished.empty or "strategy" not in finished.columns:
        return pd.DataFrame(columns=["strategy", "label", "trial_id", "curve", "scores"])
    cols = task_columns(finished)
    ranked = finished.assign(_dev=_col(finished, "dev_score")).sort_values(
        ["_dev", "trial_id"], ascending=[False, True]
    )
    for strategy, group in ranked.groupby("strategy", sort=False):
        trial = group.iloc[0]
        for curve, scores in layer_curves(trial, exits, cols).items():
            finite = [s if math.isfinite(s) else -math.inf for s in scores]
            best = int(np.argmax(finite))
            rows.append({
                "strategy": strategy, "label": trial["label"], "trial_id": trial["trial_id"],
                "curve": curve, "scores": scores, "layers": len(scores),
                "best_layer": best + 1, "best_score": scores[best], "last_score": scores[-1],
                "peaks_early": best + 1 < len(scores) and scores[best] > scores[-1],
            })  # fmt: skip
    return pd.DataFrame(rows)


def importance(finished: pd.DataFrame) -> tuple[dict[str, float], str | None, str | None]:
    """Optuna hyperparameter importance for the dev score over the parameters that vary.

    Rebuilds a study from the finished trials (variant as a categorical parameter when
    several were run). Uses fANOVA when scikit-learn is installed, else Optuna's default
    (PED-ANOVA). Returns (importances, evaluator name, note); a note instead of importances
    when there are too few trials or nothing varies.
    """
    values = _col(finished, "dev_score")
    df = finished[np.isfinite(values)]
    if len(df) < MIN_IMPORTANCE_TRIALS:
        return (
            {},
            None,
            (
                f"Hyperparameter importance needs at least {MIN_IMPORTANCE_TRIALS} finished trials "
                f"with a dev score; this sweep has {len(df)}."
            ),
        )
    names = [h for h in (*HYPERPARAMETERS, "variant") if h in df.columns]
    names = [h for h in names if df[h].notna().all() and df[h].nunique() > 1]
    if not names:
        return (
            {},
            None,
            "Hyperparameter importance: no hyperparameter varies across the finished trials.",
        )

    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    log_scale, choices = _log_scale_params(), _choice_params()
    dists: dict[str, Any] = {}
    for h in names:
        col = df[h]
        if not pd.api.types.is_numeric_dtype(col) or h in choices:
            cats = sorted(col.map(_py).unique().tolist(), key=str)
            dists[h] = CategoricalDistribution(cats)
        elif pd.api.types.is_integer_dtype(col):
            dists[h] = IntDistribution(int(col.min()), int(col.max()))
        else:
            lo, hi = float(col.min()), float(col.max())
            dists[h] = FloatDistribution(lo, hi, log=h in log_scale and lo > 0)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" chatter
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for (_, row), value in zip(df.iterrows(), values[df.index], strict=True):
        params = {h: _py(row[h]) for h in names}
        params = {
            h: (int(v) if isinstance(dists[h], IntDistribution) else v) for h, v in params.items()
        }
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(value))
        )
    try:
        import sklearn  # noqa: F401  (fANOVA's random forest)

        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {}, name, f"Hyperparameter importance could not be computed: {_one_line(exc)}"
    return {k: float(v) for k, v in result.items()}, name, None


def _py(x: Any) -> Any:
    """numpy scalar -> Python scalar (Optuna's categorical choices must be plain)."""
    return x.item() if isinstance(x, np.generic) else x


def pareto_mask(dev: pd.Series, seconds: pd.Series) -> pd.Series:
    """True where no other trial is at least as good on both and better on one
    (higher dev score, less time)."""
    d, s = dev.to_numpy(float), seconds.to_numpy(float)
    keep = []
    for i in range(len(d)):
        dominated = np.any((d >= d[i]) & (s <= s[i]) & ((d > d[i]) | (s < s[i])))
        keep.append(not dominated)
    return pd.Series(keep, index=dev.index)


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
        paper = _paper_table()
        with_paper = any(
            p in paper for p in self.variants.get("preset", pd.Series(dtype=str)).dropna()
        )
        rows = []
        for _, r in self.variants.iterrows():
            row = {"Variant": r["label"], "Dev Score": _fmt(r.get("dev_score"))}
            for col in task_columns(self.finished):
                row[_task_label(col)] = _fmt(r.get(col))
            row["Training Time"] = format_duration(r.get("train_seconds"))
            row["Avg Exit Layer"] = _exit_layer(r)
            saved = r.get("layers_saved")
            row["Layers Saved"] = f"{100 * float(saved):.1f}%" if _finite(saved) else DASH
            speed = r.get("speedup_wall")
            row["Wall Speedup"] = f"{float(speed):.2f}x" if _finite(speed) else DASH
            if with_paper:
                ref = paper.get(r.get("preset"))
                row["Paper Dev"] = _fmt(ref["dev_score"]) if ref else DASH
            row["Trials"] = str(int(r["n_trials"]))
            row["Best Trial"] = str(r["trial_id"])
            for h in self.hyperparameters:
                row[h] = _fmt_value(r.get(h))
            rows.append(row)
        return pd.DataFrame(rows)

    def ablation_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "Axis": self.ablation["axis"],
                "Value": self.ablation["value"],
                "Trials": self.ablation["trials"].astype(int).astype(str),
                "Mean Dev": self.ablation["mean_dev"].map(_fmt),
                "Best Dev": self.ablation["best_dev"].map(_fmt),
                "Mean Time": self.ablation["mean_seconds"].map(format_duration),
            }
        )

    def layerwise_table(self) -> pd.DataFrame:
        if self.layerwise.empty:
            return pd.DataFrame()
        lw = self.layerwise
        return pd.DataFrame(
            {
                "Strategy": lw["strategy"],
                "Trial": lw["trial_id"],
                "Curve": lw["curve"],
                "Best Layer": [
                    f"{b} of {n}" for b, n in zip(lw["best_layer"], lw["layers"], strict=True)
                ],
                "Best Score": lw["best_score"].map(_fmt),
                "Last Layer": lw["last_score"].map(_fmt),
                "Peaks Early": lw["peaks_early"].map(lambda x: "yes" if x else "no"),
            }
        )

    def importance_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "Parameter": list(self.importance),
                "Importance": [f"{v:.3f}" for v in self.importance.values()],
            }
        )

    def status_line(self) -> str:
        total = sum(self.status_counts.values())
        parts = ", ".join(f"{n} {s}" for s, n in self.status_counts.items())
        return (
            f"{total} trial{'s' if total != 1 else ''}{f' ({parts})' if parts else ''}; "
            f"{len(self.finished)} finished "
            f"with a dev score enter the tables."
        )

    def to_markdown(self) -> str:
        return _markdown(self)

    def to_html(self) -> str:
        return _html(self)


def _exit_layer(r: pd.Series) -> str:
    layer, n = r.get("avg_exit_layer"), r.get("num_layers")
    if not _finite(layer):
        return DASH
    return f"{float(layer):.2f}/{int(n)}" if _finite(n) else f"{float(layer):.2f}"


def summarise(variants: pd.DataFrame, finished: pd.DataFrame, counts: dict[str, int]) -> str:
    """The paragraph at the top: best variant, fastest one within a point, best exit point."""
    total = sum(counts.values())
    if variants.empty:
        return (
            f"No finished trial yet: {total} trial{'s' if total != 1 else ''} in the results "
            f"({', '.join(f'{n} {s}' for s, n in counts.items()) or 'none'})."
        )
    best = variants.iloc[0]
    cols = task_columns(finished)
    tasks = ", ".join(f"{_task_label(c)} {_fmt(best.get(c))}" for c in cols)
    text = [
        f"Best variant: {best['label']} with dev score {_fmt(best['dev_score'])}"
        + (f" ({tasks})" if tasks else "")
        + f", trained in {format_duration(best.get('train_seconds'))} (trial {best['trial_id']})."
    ]
    dev, sec = _col(variants, "dev_score"), _col(variants, "train_seconds")
    close = variants[(dev >= float(best["dev_score"]) - FASTEST_WITHIN) & np.isfinite(sec)]
    if not close.empty:
        fast = close.loc[_col(close, "train_seconds").idxmin()]
        if fast["variant"] == best["variant"]:
            text.append(f"No other variant within {FASTEST_WITHIN:.2f} of it trains faster.")
        else:
            saving = 1 - float(fast["train_seconds"]) / float(best["train_seconds"])
            text.append(
                f"Fastest variant within {FASTEST_WITHIN:.2f} of the best: {fast['label']}, dev score "
                f"{_fmt(fast['dev_score'])} in {format_duration(fast['train_seconds'])}"
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
        of_n = f" of {int(n)}" if _finite(n) else ""
        text.append(
            f"Best early-exit operating point (most layers saved with the exit dev score within "
            f"{100 * EXIT_TOLERANCE:.0f}% of full depth): {point['label']} (trial {point['trial_id']}) "
            f"exits at layer {float(point['avg_exit_layer']):.2f}{of_n} on average, saving "
            f"{100 * float(point['layers_saved']):.1f}% of the layers, at dev score "
            f"{_fmt(point['dev_score_exit'])} vs {_fmt(point['dev_score'])} at full depth."
        )
    unfinished = total - len(finished)
    text.append(
        f"{len(finished)} of {total} trials finished with a dev score"
        + (f"; {unfinished} running, stopped or failed are left out." if unfinished else ".")
    )
    return " ".join(text)


def build_report(path: str | Path, top: int = TOP_VARIANTS, figures: bool = True) -> Report:
    """Read a sweep's results (local directory or URI) and compute every table and (unless
    ``figures`` is False) every figure; ``top`` variants are drawn in the per-trial plots."""
    tables = read_tables(path)
    trials = prepare_trials(tables["trials"])
    epochs, exits = tables["epochs"], tables["exits"]
    finished = finished_trials(trials)
    counts = status_counts(trials)
    variants = best_per_variant(finished)
    hps = varying_hyperparameters(finished) or [
        h for h in PAPER_HYPERPARAMETERS if h in finished.columns
    ]
    imp, evaluator, imp_note = importance(finished)
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
        hyperparameters=hps,
        ablation=ablation(finished),
        layerwise=layerwise(finished, exits),
        importance=imp,
        importance_evaluator=evaluator,
        summary=summarise(variants, finished, counts),
    )
    if imp_note:
        report.notes.append(imp_note)
    if not report.layerwise.empty:
        tasks = [_task_label(c) for c in task_columns(finished)]
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
    if figures:
        _add_figures(report, top)
    return report


# ----------------------------------------------------------------------------- figures
def _new_figure(ncols: int, width: float = 4.6, height: float = 3.6) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    return buf.getvalue()


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _add_figures(report: Report, top: int) -> None:
    """Each plot is skipped with a note when its data is missing."""
    if report.finished.empty:
        report.notes.append("Plots skipped: no finished trial yet.")
        return
    plots = (
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


def _fig_exits(report: Report, top: int) -> Figure | str:
    ex = report.exits
    need = {"trial_id", "task", "exit_method", "metric", "avg_exit_layer"}
    if ex.empty or not need <= set(ex.columns):
        return "Exit trade-off plot skipped: exits.parquet is missing or empty."
    # the best variants, plus the best trial of every exit method not among them
    chosen = list(_top_trials(report, top)["trial_id"])
    ranked = report.finished.assign(_dev=_col(report.finished, "dev_score")).sort_values(
        "_dev", ascending=False
    )
    if "exit_method" in ranked.columns:
        for _, group in ranked.groupby("exit_method", sort=False):
            if not set(group["trial_id"]) & set(chosen):
                chosen.append(group.iloc[0]["trial_id"])
    ex = ex[ex["trial_id"].isin(chosen)]
    if ex.empty:
        return "Exit trade-off plot skipped: no exit rows for the finished trials."
    labels = report.trials.set_index("trial_id")["label"].to_dict()
    tasks = list(dict.fromkeys(ex["task"]))
    fig, axes = _new_figure(len(tasks))
    colors = dict(zip(chosen, _colors(len(chosen)), strict=True))
    for ax, task in zip(axes, tasks, strict=True):
        for (tid, method), rows in ex[ex["task"] == task].groupby(
            ["trial_id", "exit_method"], sort=False
        ):
            rows = rows.sort_values("avg_exit_layer")
            ax.plot(rows["avg_exit_layer"], rows["metric"], marker="o", ms=3, color=colors[tid],
                    label=f"{labels.get(tid, tid)} ({method})")  # fmt: skip
            layer, metric = _operating_point(report.trials, tid, task)
            if layer is not None:
                ax.scatter([layer], [metric], marker="D", s=60, color=colors[tid],
                           edgecolors="black", zorder=3)  # fmt: skip
        metric = TASK_COLUMN.get(task)
        ax.set_title(_task_label(metric) if metric else task)
        ax.set_xlabel("average exit layer")
        ax.set_ylabel("dev metric")
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=7)
    return Figure(
        "tradeoff_exit",
        "Task metric vs average exit layer",
        "Per task, the dev metric at each exit setting of the best trials' exit methods "
        "(fixed layer k for trials without one); diamonds: the operating point each trial chose "
        "on its calibration slice. Up and to the left is better.",
        _png(fig),
    )


def _operating_point(trials: pd.DataFrame, trial_id: str, task: str) -> tuple[float | None, float]:
    """(average exit layer, metric) a trial chose for a task (``<task>_exit_layer`` and
    ``<metric>_exit`` columns), or (None, nan) when the results do not have them."""
    metric = TASK_COLUMN.get(task, task)
    cols = (f"{task}_exit_layer", f"{metric}_exit")
    if not set(cols) <= set(trials.columns):
        return None, math.nan
    row = trials[trials["trial_id"] == trial_id]
    if row.empty:
        return None, math.nan
    layer, value = (row.iloc[0][c] for c in cols)
    if not (_finite(layer) and _finite(value)):
        return None, math.nan
    return float(layer), float(value)


def _fig_dev_vs_time(report: Report, top: int) -> Figure | str:
    df = report.finished.assign(
        _dev=_col(report.finished, "dev_score"), _sec=_col(report.finished, "train_seconds")
    )
    df = df[np.isfinite(df["_dev"]) & np.isfinite(df["_sec"])]
    if df.empty:
        return "Dev score vs training time plot skipped: no finished trial with a training time."
    front = df[pareto_mask(df["_dev"], df["_sec"])].sort_values("_sec")
    fig, (ax,) = _new_figure(1, width=9.5, height=4.8)
    labels = list(dict.fromkeys(df["label"]))
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    for label, group in df.groupby("label", sort=False):
        ax.scatter(group["_sec"] / 60, group["_dev"], s=28, color=colors[label], label=label)
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
        f"All {len(df)} finished trials; circled: the Pareto front (no trial is both better and faster).",
        _png(fig),
    )


def _fig_epochs(report: Report, top: int) -> Figure | str:
    ep = report.epochs
    if ep.empty or not {"trial_id", "epoch", "dev_score"} <= set(ep.columns):
        return "Dev score per epoch plot skipped: epochs.parquet is missing or empty."
    best = _top_trials(report, top)
    ep = ep[ep["trial_id"].isin(best["trial_id"])]
    if ep.empty:
        return "Dev score per epoch plot skipped: no epoch rows for the best trials."
    fig, (ax,) = _new_figure(1, width=7.5, height=4.2)
    for (_, r), color in zip(best.iterrows(), _colors(len(best)), strict=True):
        rows = ep[ep["trial_id"] == r["trial_id"]].sort_values("epoch")
        if not rows.empty:
            ax.plot(
                rows["epoch"], _col(rows, "dev_score"), marker="o", color=color, label=r["label"]
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev score")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return Figure(
        "dev_per_epoch",
        "Dev score per epoch",
        f"The best trial of the top {len(best)} variants.",
        _png(fig),
    )


def _fig_hyperparameters(report: Report, top: int) -> Figure | str:
    df = report.finished
    views = [(h, t) for h, t in (("lr", "learning rate"), ("batch_size", "batch size"), ("dropout", "dropout"))
             if h in df.columns and _col(df, h).notna().any()]  # fmt: skip
    if not views:
        return "Hyperparameter plots skipped: the trials have no lr, batch_size or dropout column."
    fig, axes = _new_figure(len(views), width=4.0)
    dev = _col(df, "dev_score")
    for ax, (h, title) in zip(axes, views, strict=True):
        x = _col(df, h)
        if h == "batch_size":
            values = sorted(x.dropna().unique())
            pos = {v: i for i, v in enumerate(values)}
            jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(x))
            ax.scatter([pos.get(v, np.nan) for v in x] + jitter, dev, s=18, alpha=0.8)
            means = [dev[x == v].mean() for v in values]
            ax.plot(
                range(len(values)), means, color="black", marker="_", ms=24, ls="none", label="mean"
            )
            ax.set_xticks(range(len(values)), [_fmt_value(v) for v in values])
            ax.legend(fontsize=7)
        else:
            ax.scatter(x, dev, s=18, alpha=0.8)
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
        "Every finished trial (the BERTer paper's Figures 2-4).",
        _png(fig),
    )


def _fig_layerwise(report: Report, top: int) -> Figure | str:
    lw = report.layerwise
    if lw.empty:
        return "Layer-wise plot skipped: no per-layer scores (layer_scores or <metric>_layers) in the results."
    order = [*(_task_label(c) for c in task_columns(report.finished)), "Dev score"]
    curves = sorted(
        dict.fromkeys(lw["curve"]), key=lambda c: order.index(c) if c in order else len(order)
    )
    fig, axes = _new_figure(len(curves), width=3.8)
    strategies = list(dict.fromkeys(lw["strategy"]))
    colors = dict(zip(strategies, _colors(len(strategies)), strict=True))
    for ax, curve in zip(axes, curves, strict=True):
        for _, r in lw[lw["curve"] == curve].iterrows():
            color = colors[r["strategy"]]
            ax.plot(np.arange(1, r["layers"] + 1), r["scores"], marker="o", ms=3, color=color)
            ax.scatter([r["best_layer"]], [r["best_score"]], marker="*", s=120, color=color,
                       edgecolors="black", zorder=3)  # fmt: skip
        ax.set_title(curve)
        ax.set_xlabel("exit layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score if every example exits here")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[s], marker="o", ms=3, label=s) for s in strategies]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(strategies), fontsize=8)
    return Figure(
        "layerwise",
        "Score of every exit layer (best trial per strategy)",
        "Stars mark each curve's best layer: a star before the last layer means the curve peaks "
        "early (the convexity of BERT's layers).",
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


# ----------------------------------------------------------------------------- rendering
def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown pipe table of string cells."""
    if df.empty:
        return "_(none)_"

    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def _sections(report: Report) -> list[tuple[str, str, pd.DataFrame | None]]:
    """(title, intro text, table) of the report, in order; figures follow the tables."""
    axis_note = (
        "Per value of each variant axis, over all finished trials: mean and best dev score "
        "and mean training time."
    )
    variant_note = (
        "One row per variant: its best finished trial by dev score, sorted by dev score "
        "(the shape of Table 2 of the BERTer paper). Training time is hh:mm:ss; avg exit layer "
        "and layers saved are at the calibrated early-exit operating point."
        + (
            " Paper Dev: the paper's reported dev score for that row."
            if "Paper Dev" in report.variant_table()
            else ""
        )
    )
    imp_intro = (
        f"Optuna {report.importance_evaluator} importance of each varying hyperparameter for the "
        "dev score, from the finished trials."
        if report.importance
        else ""
    )
    return [
        ("Variants", variant_note, report.variant_table()),
        ("Ablation", axis_note, report.ablation_table()),
        (
            "Layer-wise scores",
            "Per curve, the best exit layer of the best trial of each strategy and the score "
            "there vs at the last layer.",
            report.layerwise_table(),
        ),
        (
            "Hyperparameter importance",
            imp_intro,
            report.importance_table() if report.importance else None,
        ),
    ]


def _markdown(report: Report) -> str:
    figs = {f.name: f for f in report.figures}
    placement = {
        "Variants": ["dev_vs_time", "tradeoff_exit", "dev_per_epoch", "hyperparameters"],
        "Layer-wise scores": ["layerwise"],
        "Hyperparameter importance": ["importance"],
    }
    out = [f"# Sweep report: {report.name}", "", f"Results: `{report.source}`", "", report.summary, "",
           report.status_line(), ""]  # fmt: skip
    for title, intro, table in _sections(report):
        out += [f"## {title}", ""]
        if intro:
            out += [intro, ""]
        if table is not None:
            out += [markdown_table(table), ""]
        for name in placement.get(title, []):
            if name in figs:
                f = figs[name]
                out += [f"### {f.title}", "", f"![{f.title}]({f.filename})", "", f.caption, ""]
    if report.notes:
        out += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    return "\n".join(out)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
td:first-child { white-space: normal; min-width: 12em; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; } .muted { color: #666; }
figure { margin: 1em 0 2em; } figcaption { color: #555; font-size: 0.9em; }
"""


def _html(report: Report) -> str:
    esc = html.escape
    figs = {f.name: f for f in report.figures}
    placement = {
        "Variants": ["dev_vs_time", "tradeoff_exit", "dev_per_epoch", "hyperparameters"],
        "Layer-wise scores": ["layerwise"],
        "Hyperparameter importance": ["importance"],
    }
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sweep report: {esc(report.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Sweep report: {esc(report.name)}</h1>",
        f'<p class="muted">Results: <code>{esc(report.source)}</code></p>',
        f"<p>{esc(report.summary)}</p>",
        f'<p class="muted">{esc(report.status_line())}</p>',
    ]
    for title, intro, table in _sections(report):
        out.append(f"<h2>{esc(title)}</h2>")
        if intro:
            out.append(f"<p>{esc(intro)}</p>")
        if table is not None:
            out.append(
                table.to_html(index=False, border=0, escape=True)
                if not table.empty
                else "<p>(none)</p>"
            )
        for name in placement.get(title, []):
            if name in figs:
                f = figs[name]
                out.append(
                    f'<figure><h3>{esc(f.title)}</h3><img src="{esc(f.filename)}" alt="{esc(f.title)}">'
                    f"<figcaption>{esc(f.caption)}</figcaption></figure>"
                )
    if report.notes:
        out.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in report.notes) + "</ul>"
        )
    out.append("</body></html>")
    return "\n".join(out)


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write report.md, report.html and the figures' PNGs into ``out_dir`` (a local
    directory); returns the paths written. Figures of an earlier run that this one skipped
    are removed so the folder matches the report."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        keep = {f.filename for f in report.figures}
        for stale in FIGURE_NAMES:
            if f"{stale}.png" not in keep:
                (out / f"{stale}.png").unlink(missing_ok=True)
        for f in report.figures:
            (out / f.filename).write_bytes(f.png)
            written.append(out / f.filename)
        (out / "report.md").write_text(report.to_markdown(), encoding="utf-8")
        (out / "report.html").write_text(report.to_html(), encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot write the report to {out}: {_one_line(exc)}") from None
    return [out / "report.md", out / "report.html", *written]


FIGURE_NAMES = (
    "tradeoff_exit",
    "dev_vs_time",
    "dev_per_epoch",
    "hyperparameters",
    "layerwise",
    "importance",
)


# Terminal headers: short, so that Table 2's columns fit a 100-column terminal.
SHORT_HEADERS = {
    "Dev Score": "Dev", "Paraphrase": "Para", "Training Time": "Time", "Avg Exit Layer": "Exit L",
    "Layers Saved": "Saved", "Wall Speedup": "Speedup", "Paper Dev": "Paper", "Best Trial": "Trial",
}  # fmt: skip


def print_report(report: Report, console: Any = None) -> None:
    """The summary and tables on the terminal (rich). The variant table is split in two
    (metrics, then trial and hyperparameters) to fit a terminal; the files keep it whole."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or redirected: do not squeeze into 80 columns
            console = Console(width=max(console.width, 200))
    console.print(f"[bold]Sweep report: {report.name}[/bold]  ({report.source})", highlight=False)
    console.print(report.summary, highlight=False)
    console.print(report.status_line(), style="dim", highlight=False)
    tables = []
    for title, _, table in _sections(report):
        if title == "Variants" and not table.empty:
            split = table.columns.get_loc("Trials")
            tables.append((title, table.iloc[:, :split]))
            tables.append(
                (
                    "Best trial and hyperparameters per variant",
                    table.iloc[:, [0, *range(split, table.shape[1])]],
                )
            )
        elif table is not None and not table.empty:
            tables.append((title, table))
    for title, table in tables:
        table = table.rename(columns=SHORT_HEADERS)
        t = Table(title=title, title_justify="left")
        for i, col in enumerate(table.columns):
            if i == 0:  # names wrap; numbers keep their full width
                t.add_column(str(col), justify="left", overflow="fold", min_width=16)
            else:
                width = max(len(str(x)) for x in table[col])
                t.add_column(str(col), justify="right", no_wrap=True, min_width=width)
        for row in table.itertuples(index=False):
            t.add_row(*(str(x) for x in row))
        console.print(t)
    for note in report.notes:
        console.print(f"note: {note}", style="yellow", highlight=False)


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python sweeps/report.py",
        description=(
            "Comparison report of a sweep: variant table (BERTer Table 2 shape), ablation, "
            "trade-off and layer-wise plots, hyperparameter importance. Writes report.md, "
            "report.html and PNG figures next to the Parquet files (or into --out)."
        ),
    )
    p.add_argument("results", help="results directory (results/<name>) or an s3:// / gs:// URI")
    p.add_argument(
        "--out", help="directory for the report files (needed for s3:// / gs:// results)"
    )
    p.add_argument(
        "--top", type=int, default=TOP_VARIANTS, help="variants drawn in the per-trial plots"
    )
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.top < 1:
            raise BerterError(f"--top must be >= 1, got {args.top}")
        if args.out:
            out_dir = Path(args.out)
        else:
            _, _, local = _filesystem(args.results)
            if local is None:
                raise BerterError(
                    f"{args.results} is not a local directory: pass --out DIR for the report files"
                )
            out_dir = local
        report = build_report(args.results, top=args.top)
        paths = write_report(report, out_dir)
    except BerterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print_report(report)
    print(f"wrote {paths[0]}, {paths[1].name} and {len(paths) - 2} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
