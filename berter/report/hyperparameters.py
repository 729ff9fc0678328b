"""A trial's hyperparameters in the report: which they are, which vary, and which mattered.

They are the search space's settings (``berter.sweep.space.SPACE``, the variant axes left
out: the variant table and the ablation show those), in its order, then every other
hyperparameter column of the results (``berter.sweep.store.hyperparameter_fields``: the
``Config`` fields), so a setting made searchable, or a new ``Config`` field whose value
differs between trials, is shown and ranked here without another edit. Importance comes from
Optuna's own evaluator on the sweep's stored study (``berter.sweep.study``: the trials Optuna
was told were complete, with the parameters it proposed); a sweep without one (made before
studies were stored) gets a study rebuilt from its finished trials.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from berter.config import AXES, Config
from berter.errors import first_line
from berter.report.cells import numeric
from berter.sweep.space import PAPER_BEST, SPACE
from berter.sweep.store import hyperparameter_fields

_FIELDS = {f.name for f in dataclasses.fields(Config)}
# Searchable Config settings, in the search space's order; the table shows the ones that vary.
HYPERPARAMETERS = tuple(p.field for p in SPACE if p.field in _FIELDS and p.field not in AXES)
PAPER_HYPERPARAMETERS = tuple(PAPER_BEST)  # the paper's four, shown when none vary
LOG_SCALE = {p.field for p in SPACE if p.kind == "loguniform"}
CHOICES = {p.field for p in SPACE if p.kind == "choice"}
MIN_IMPORTANCE_TRIALS = 5


def hyperparameter_columns() -> list[str]:
    """The searchable settings, then the results schema's other hyperparameter columns."""
    others = [name for name, _ in hyperparameter_fields() if name not in HYPERPARAMETERS]
    return [*HYPERPARAMETERS, *others]


def varying_hyperparameters(finished: pd.DataFrame) -> list[str]:
    """Hyperparameters with more than one value among the finished trials."""
    return [
        h
        for h in hyperparameter_columns()
        if h in finished.columns and finished[h].nunique(dropna=True) > 1
    ]


def shown_hyperparameters(finished: pd.DataFrame) -> list[str]:
    """The variant table's hyperparameter columns: those that vary, else the paper's four."""
    return varying_hyperparameters(finished) or [
        h for h in PAPER_HYPERPARAMETERS if h in finished.columns
    ]


def importance(
    finished: pd.DataFrame, study: optuna.Study | None = None
) -> tuple[dict[str, float], str | None, str | None]:
    """Optuna hyperparameter importance for the sweep's objective over the parameters that vary.

    From the stored ``study`` when there is one, else from a study rebuilt from the finished
    trials (variant as a categorical parameter when several were run). Uses fANOVA when
    scikit-learn is installed, else Optuna's default (PED-ANOVA). Returns (importances,
    evaluator name, note); a note instead of importances when there are too few trials or
    nothing varies.
    """
    if study is not None:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        names = sorted({k for t in complete for k in t.params})
        names = [n for n in names if len({str(t.params.get(n)) for t in complete}) > 1]
        count, source = len(complete), "complete trials of the stored Optuna study"
    else:
        study, count, names = _rebuilt_study(finished)
        source = "finished trials"
    if count < MIN_IMPORTANCE_TRIALS:
        return {}, None, (
            f"Hyperparameter importance needs at least {MIN_IMPORTANCE_TRIALS} {source}; "
            f"this sweep has {count}."
        )  # fmt: skip
    if not names or study is None:
        return {}, None, f"Hyperparameter importance: no hyperparameter varies across the {source}."
    try:
        import sklearn  # noqa: F401  (fANOVA's random forest; optional)

        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None  # the first objective
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(
                study, evaluator=evaluator, params=names, target=target
            )
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {}, name, f"Hyperparameter importance could not be computed: {first_line(exc)}"
    return {k: float(v) for k, v in result.items()}, name, None


def _rebuilt_study(finished: pd.DataFrame) -> tuple[optuna.Study | None, int, list[str]]:
    """A study of the finished trials' dev scores, for sweeps without a stored one."""
    values = numeric(finished, "dev_score")
    df = finished[np.isfinite(values)]
    names = [h for h in (*hyperparameter_columns(), "variant") if h in df.columns]
    names = [h for h in names if df[h].notna().all() and df[h].nunique() > 1]
    if len(df) < MIN_IMPORTANCE_TRIALS or not names:
        return None, len(df), names
    dists: dict[str, Any] = {}
    for h in names:
        col = df[h]
        if not pd.api.types.is_numeric_dtype(col) or h in CHOICES:
            cats = sorted(col.map(_py).unique().tolist(), key=str)
            dists[h] = CategoricalDistribution(cats)
        elif pd.api.types.is_integer_dtype(col):
            dists[h] = IntDistribution(int(col.min()), int(col.max()))
        else:
            lo, hi = float(col.min()), float(col.max())
            dists[h] = FloatDistribution(lo, hi, log=h in LOG_SCALE and lo > 0)

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
    return study, len(df), names


def _py(x: Any) -> Any:
    """numpy scalar -> Python scalar (Optuna's categorical choices must be plain)."""
    return x.item() if isinstance(x, np.generic) else x
