"""Choosing an exit rule's operating point post hoc, from one cached pass over a split.

Post-hoc tables (``operating_point``): from one cached pass over a split (every exit's
logits and pooled vectors), each grid value's exit layer per example is simulated without
re-running the backbone. The operating point is chosen per task on the calibration slice
held out from the training data: among the settings whose calibration metric is within
``cfg.exit_tolerance`` (relative) of the final layer's, the one with the highest expected
wall-clock speedup under the run's cost model (berter.exits.cost: each layer and each exit
check timed on the run's machine); dev metrics are reported there. Fewest layers is not
fastest: a check costs time at every layer where it runs, so one threshold may run its
checks on a range of layers only (``choose_fastest``), and a setting expected to be slower
than the full model, at any batch size of the cost model, is never chosen. Per task,
because each task's signal lives on its own scale (5-way vs. binary confidence, LTE
certainty for STS). When no setting qualifies, or a task has no calibration data, the
task runs to the last layer: no early exit, speedup 1. ``cfg.exit_threshold``, when set,
is used for every task instead (it is the rule's scalar: a patience for ``patience``, q for
``qexit``). With ``cfg.exit_per_layer`` each task gets one value per exit layer instead,
grown greedily (``choose_per_layer``) and guarded by bootstrap resamples of the slice.
``cfg.patience`` and ``cfg.qexit_q`` are those methods' defaults where nothing was
calibrated (the inference command line with another ``--method``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from berter.exits.base import ExitContext, ExitMethod, Param, never_exits
from berter.exits.cost import CostModel, expected_seconds, expected_speedups
from berter.metrics import dev_score, task_metric, task_metric_rows
from berter.tasks import metric_column

if TYPE_CHECKING:  # the model module imports transformers' BERT: not for a config check
    pass

Costs = dict[str, CostModel]  # task -> its engine cost model

# ----------------------------------------------------------------------------- post-hoc tables
@dataclass
class Curve:
    """One task's trade-off on one split: per grid value, metric and mean exit layer (1-based)."""

    params: list[float]
    metrics: list[float]
    avg_layers: list[float]


def simulate(method: ExitMethod, ctx: ExitContext, te: Any, params: list[Param]) -> Curve:
    """Exit decisions of each param on a cached split (a TaskEval), without the backbone."""
    n = ctx.num_layers
    if len(te.labels) == 0:
        nan = [float("nan")] * len(params)
        return Curve(list(params), nan, nan)
    signals = method.layer_signals(ctx, te.logits, te.pooled)
    preds = np.stack(te.preds)  # [n, N]
    cols = np.arange(preds.shape[1])
    metrics, layers = [], []
    for param in params:
        exit_at = (
            method.exit_layers(signals, param)
            if not never_exits(param)
            else np.full(preds.shape[1], n - 1)
        )
        metrics.append(task_metric(ctx.task, preds[exit_at, cols], te.labels))
        layers.append(float(exit_at.mean() + 1))
    return Curve(list(params), metrics, layers)


def choose(curve: Curve, final: float, tolerance: float) -> float | None:
    """The param with the fewest average layers whose metric is within ``tolerance``
    (relative) of ``final``: the choice before issue 32, blind to what exit checks cost.

    Ties in speed go to the better metric; None (no early exit) when no param qualifies.
    """
    if math.isnan(final):
        return None
    floor = final - tolerance * abs(final)
    best = None
    for param, metric, layer in zip(curve.params, curve.metrics, curve.avg_layers, strict=True):
        if math.isnan(metric) or metric < floor:
            continue
        if best is None or (layer, -metric) < (best[1], -best[2]):
            best = (param, layer, metric)
    return None if best is None else best[0]


def exit_at_of(method: ExitMethod, signals: Any, param: Param, n: int, count: int) -> np.ndarray:
    """0-based exit layer per example of a setting (the last layer for no early exit)."""
    if never_exits(param):
        return np.full(count, n - 1)
    return method.exit_layers(signals, param)


def speedups_of(
    method: ExitMethod, cost: CostModel, exit_at: np.ndarray, param: Param, n: int
) -> tuple[float, ...]:
    """Expected speedup of a setting at each of the cost model's batch sizes."""
    return expected_speedups(cost, exit_at, method.checked_layers(param, n))


CALIB_RESAMPLES = 200  # bootstrap resamples of the calibration slice guarding a choice


class Resamples:
    """Paired bootstrap resamples of a calibration split (a resample scores the final layer
    on the same examples): the share of them in which a setting keeps the tolerance."""

    def __init__(self, te: Any, tolerance: float, resamples: int = CALIB_RESAMPLES):
        gold = np.asarray(te.labels)
        self.task = te.task
        self.rows = np.random.default_rng(0).integers(0, len(gold), (resamples, len(gold)))
        self.gold = gold[self.rows]
        final = task_metric_rows(self.task, np.asarray(te.preds[-1])[self.rows], self.gold)
        self.floor = final - tolerance * np.abs(final)

    def kept(self, pred: np.ndarray) -> float:
        """Share of resamples where predictions ``pred`` (one per example) keep the tolerance."""
        return float((task_metric_rows(self.task, pred[self.rows], self.gold) >= self.floor).mean())


def windows(value: float, n: int) -> list[Param]:
    """One threshold, checked on every contiguous range of the exit layers (all of them
    first, as a plain number): a check where few examples leave costs more than it saves."""
    out: list[Param] = [value]
    for first in range(n - 1):
        for last in range(first, n - 1):
            if (first, last) != (0, n - 2):
                out.append(tuple(value if first <= i <= last else None for i in range(n - 1)))
    return out


def choose_fastest(
    method: ExitMethod,
    ctx: ExitContext,
    te: Any,
    grid: list[float],
    tolerance: float,
    cost: CostModel,
    confidence: float = 0.0,
) -> Param:
    """One threshold with the highest expected speedup within ``tolerance`` on a split.

    Candidates are each grid value, checked on every contiguous range of exit layers
    (``windows``); ties go to the better metric, then to checks on all layers, then to the
    first grid value. Every candidate keeps the tolerance on the whole split; one checked on
    a range of layers also in at least ``confidence`` of its bootstrap resamples
    (``Resamples``), as per-layer settings do: a range can cut every example off at one
    layer, whose score on a small slice is the noise the guard is for (issue 32's default
    trial: SST cut off at layer 4 scored 102% of the last layer on 200 calibration
    examples and 96% on dev).
    None (no early exit) when nothing within tolerance is expected to beat the full model
    at the first of the cost model's batch sizes without losing to it at any other. With
    ``LAYERS_ONLY`` costs: the fewest average layers among these candidates (before issue 32
    the plain thresholds alone were candidates: ``choose``).
    """
    n = ctx.num_layers
    final = te.final
    if n < 2 or len(te.labels) == 0 or math.isnan(final) or not grid:
        return None
    signals = method.layer_signals(ctx, te.logits, te.pooled)
    preds = np.stack(te.preds)
    cols = np.arange(preds.shape[1])
    floor = final - tolerance * abs(final)
    guard = Resamples(te, tolerance) if confidence > 0 else None
    best: tuple[tuple[float, float, bool], Param] | None = None
    for value in grid:
        for param in windows(value, n):
            exit_at = method.exit_layers(signals, param)
            pred = preds[exit_at, cols]
            metric = task_metric(ctx.task, pred, te.labels)
            if math.isnan(metric) or metric < floor:
                continue
            speeds = speedups_of(method, cost, exit_at, param, n)
            if speeds[0] <= 1.0 + 1e-9 or min(speeds) < 1.0 - 1e-9:
                continue
            key = (speeds[0], metric, not isinstance(param, tuple))
            if best is not None and key <= best[0]:
                continue
            ranged = isinstance(param, tuple)
            if ranged and guard is not None and guard.kept(pred) < confidence:
                continue
            best = (key, param)
    return None if best is None else best[1]


def expected_speedup(
    method: ExitMethod, ctx: ExitContext, te: Any, param: Param, cost: CostModel
) -> tuple[float, ...]:
    """A setting's expected speedup on a split (a TaskEval), per cost-model batch size."""
    n = ctx.num_layers
    signals = method.layer_signals(ctx, te.logits, te.pooled) if len(te.labels) else None
    exit_at = exit_at_of(method, signals, param, n, len(te.labels))
    return speedups_of(method, cost, exit_at, param, n)


def choose_per_layer(
    method: ExitMethod,
    ctx: ExitContext,
    te: Any,
    grid: list[float],
    tolerance: float,
    confidence: float,
    cost: CostModel,
    resamples: int = CALIB_RESAMPLES,
) -> tuple[float | None, ...] | None:
    """One setting per exit layer, grown greedily on a calibration split (a TaskEval).

    Starting from no early exit, each step sets one layer to a grid value, or back to
    "nothing exits here" (no check: a check that lets few examples out costs more than it
    saves), taking the change that saves the most expected time (``cost``, at its first
    batch size) per point of metric lost, among the changes that keep the calibration metric
    within ``tolerance`` (relative) of the final layer's, both on the whole slice and in at
    least ``confidence`` of its bootstrap resamples (paired: a resample scores the final
    layer on the same examples), and that are expected no slower than the full model at any
    of the cost model's batch sizes. Choosing n - 1 values fits the slice's noise far more
    than one shared value does; the resample guard keeps the dev metric near the slice's.
    None when no layer can exit early at a gain. With ``LAYERS_ONLY`` costs the time saved
    is the layers saved, the choice before issue 32.
    """
    n, task = ctx.num_layers, ctx.task
    final = te.final
    if n < 2 or len(te.labels) == 0 or math.isnan(final) or not grid:
        return None
    signals = method.layer_signals(ctx, te.logits, te.pooled)
    preds = np.stack(te.preds)  # [n, N]
    gold = np.asarray(te.labels)
    cols = np.arange(len(gold))
    guard = Resamples(te, tolerance, resamples)
    floor = final - tolerance * abs(final)
    batch = cost.batch_sizes[0]
    current: tuple[float | None, ...] = (None,) * (n - 1)
    metric = final
    seconds = expected_seconds(cost, np.full(len(gold), n - 1), [False] * (n - 1), batch)
    while True:
        best = None
        for i in range(n - 1):
            for value in [None, *grid]:
                if value == current[i]:
                    continue
                cand = current[:i] + (value,) + current[i + 1 :]
                if never_exits(cand):
                    continue
                exit_at = method.exit_layers(signals, cand)
                checked = method.checked_layers(cand, n)
                secs = expected_seconds(cost, exit_at, checked, batch)
                if secs >= seconds * (1 - 1e-9):
                    continue
                pred = preds[exit_at, cols]
                m = task_metric(task, pred, gold)
                if math.isnan(m) or m < floor:
                    continue
                gain = (seconds - secs) / max(metric - m, 1e-4)
                if best is not None and gain <= best[0]:
                    continue
                if min(expected_speedups(cost, exit_at, checked)) < 1.0 - 1e-9:
                    continue
                if guard.kept(pred) < confidence:
                    continue
                best = (gain, cand, m, secs)
        if best is None:
            break
        _, current, metric, seconds = best
    return None if never_exits(current) else current


def _contexts(run: Any) -> dict[str, ExitContext]:
    return {t.name: ExitContext.from_model(run.model, t) for t in run.tasks}


def calibrate(run: Any, calib: Any = None, costs: Costs | None = None) -> dict[str, Param]:
    """Per-task operating param chosen on the calibration slice (``cfg.exit_threshold`` wins).

    ``costs``: per task, the cost model the choice is made with; by default the run's own,
    timed on this machine (``run.exit_costs()``). ``LAYERS_ONLY`` for every task gives the
    fewest-layers choice.
    """
    method, cfg = run.method, run.cfg
    n = run.model.num_layers
    grids = {t.name: method.grid(t, n) for t in run.tasks}
    if cfg.exit_threshold is not None:
        return {name: float(cfg.exit_threshold) if grid else None for name, grid in grids.items()}
    if not any(grids.values()):
        return dict.fromkeys(grids)
    calib = calib if calib is not None else run.evaluate("calib")
    ctxs = _contexts(run)
    chosen: dict[str, Param] = {}
    for t in run.tasks:
        te = calib.tasks[t.name]
        grid = grids[t.name]
        if not grid or len(te.labels) == 0:
            chosen[t.name] = None  # nothing to exit on, or no calibration data: the last layer
            continue
        if costs is None:
            costs = run.exit_costs()
        if cfg.exit_per_layer:
            chosen[t.name] = choose_per_layer(
                method, ctxs[t.name], te, grid, cfg.exit_tolerance, cfg.exit_confidence,
                costs[t.name],
            )  # fmt: skip
        else:
            chosen[t.name] = choose_fastest(
                method, ctxs[t.name], te, grid, cfg.exit_tolerance, costs[t.name],
                cfg.exit_confidence,
            )  # fmt: skip
    return chosen


def operating_point(
    run: Any, dev: Any, calib: Any = None, costs: Costs | None = None
) -> dict[str, Any]:
    """Early-exit metrics of one evaluation: dev metrics at the calibrated operating point,
    the average exit layer, and the full trade-off table (``exit_table``). ``calib``: the
    calibration slice's evaluation, when the caller already has it; ``costs``: as for
    ``calibrate``.

    ``exit_table`` rows: {task, exit_method, threshold, metric, avg_exit_layer, layers_saved,
    calib_metric, calib_avg_exit_layer}, dev metrics per grid value. For ``none`` the rows are
    the fixed-layer curve ("every example exits at layer k", threshold = k).
    """
    method, cfg = run.method, run.cfg
    n = dev.num_layers
    ctxs = _contexts(run)
    has_grid = any(method.grid(t, n) for t in run.tasks)
    if not has_grid or cfg.exit_threshold is not None:
        calib = None
    elif calib is None:
        calib = run.evaluate("calib")
    chosen = calibrate(run, calib, costs)
    row: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    metrics, layers = {}, []
    for t in run.tasks:
        te = dev.tasks[t.name]
        ctx = ctxs[t.name]
        grid = method.grid(t, n)
        if grid:
            curve = simulate(method, ctx, te, grid)
            cal = simulate(method, ctx, calib.tasks[t.name], grid) if calib is not None else None
            for k, param in enumerate(grid):
                table.append({
                    "task": t.name, "exit_method": method.name, "threshold": float(param),
                    "metric": curve.metrics[k], "avg_exit_layer": curve.avg_layers[k],
                    "layers_saved": 1.0 - curve.avg_layers[k] / n,
                    "calib_metric": cal.metrics[k] if cal else float("nan"),
                    "calib_avg_exit_layer": cal.avg_layers[k] if cal else float("nan"),
                })  # fmt: skip
        elif method.name == "none":
            for k in range(n):
                table.append({
                    "task": t.name, "exit_method": method.name, "threshold": float(k + 1),
                    "metric": te.metrics[k], "avg_exit_layer": float(k + 1),
                    "layers_saved": 1.0 - (k + 1) / n,
                    "calib_metric": float("nan"), "calib_avg_exit_layer": float("nan"),
                })  # fmt: skip
        param = chosen[t.name]
        at = simulate(method, ctx, te, [param])
        metric, layer = at.metrics[0], at.avg_layers[0]
        if math.isnan(layer):
            layer = float(n)
        metrics[t.name] = metric
        layers.append(layer)
        row[f"{metric_column(t)}_exit"] = metric
        row[f"{t.name}_exit_layer"] = layer
        row[f"{t.name}_layers_saved"] = 1.0 - layer / n
        per_layer = isinstance(param, tuple)
        row[f"{t.name}_threshold"] = float("nan") if param is None or per_layer else float(param)
        row[f"{t.name}_layer_thresholds"] = layer_values(param, float("nan")) if per_layer else None
    avg = float(np.mean(layers)) if layers else float(n)
    row["dev_score_exit"] = dev_score(metrics, {t.name: t for t in run.tasks})
    row["avg_exit_layer"] = avg
    row["layers_saved"] = 1.0 - avg / n
    row["exit_table"] = table
    return row


def thresholds_from_metrics(metrics: dict[str, Any], tasks: list[str]) -> dict[str, Param]:
    """Recover the per-task operating params from an ``operating_point`` row (NaN -> None)."""
    out: dict[str, Param] = {}
    for name in tasks:
        layers = metrics.get(f"{name}_layer_thresholds")
        has_layers = layers is not None and len(layers) > 0
        out[name] = as_param(list(layers) if has_layers else metrics.get(f"{name}_threshold"))
    return out


def as_param(value: Any) -> Param:
    """A stored operating param (a number, a list with null/NaN for "never", or null)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        out = tuple(None if v is None or math.isnan(float(v)) else float(v) for v in value)
        return None if never_exits(out) else out
    value = float(value)
    return None if math.isnan(value) else value


def layer_values(param: tuple[float | None, ...], never: float | None) -> list[float | None]:
    """A per-layer param as a plain list for storage, ``never`` where nothing exits (NaN in
    Parquet, null in JSON); ``as_param`` reads either back."""
    return [never if v is None else float(v) for v in param]


def describe(param: Param) -> str:
    """An operating param for people: "0.9", or per layer "0.96/0.94/0.3/-/-" (- never)."""
    if param is None:
        return "none (last layer)"
    if isinstance(param, tuple):
        return "/".join("-" if v is None else f"{v:g}" for v in param)
    return f"{param:g}"


