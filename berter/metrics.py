"""Predictions, task metrics and the dev score.

The dev score is ``(SST accuracy + paraphrase accuracy + (STS Pearson + 1) / 2) / 3``. The
BERTer paper only says its dev score is an "average"; this formula is inferred from its
Table 2, whose printed dev score it reproduces from the printed task columns on six rows (on
the other six the printed score is 0.01-0.09 lower, see docs/concepts.md).
With other task sets, each classification task contributes its accuracy and each
regression task ``(r + 1) / 2``, averaged.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from berter.tasks import Task


def predict(
    task: Task, logits: torch.Tensor, siamese: bool = False, threshold: float = 0.5
) -> torch.Tensor:
    """Turn one exit's raw output into predictions (class ids, 0/1, or scores)."""
    if task.is_regression:
        return (5.0 * logits).clamp(0.0, 5.0) if siamese else logits
    if logits.dim() == 1:
        return (logits > threshold).long() if siamese else (logits > 0).long()
    return logits.argmax(-1)


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(gold)).mean()) if len(gold) else float("nan")


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    pred, gold = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if len(gold) < 2 or pred.std() == 0 or gold.std() == 0:
        return 0.0  # a constant predictor carries no correlation
    return float(np.corrcoef(pred, gold)[0, 1])


def task_metric(task: Task, pred: np.ndarray, gold: np.ndarray) -> float:
    return pearson(pred, gold) if task.metric == "pearson" else accuracy(pred, gold)


def task_metric_rows(task: Task, pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """The task metric of each row of [R, N] predictions against [R, N] gold, at once
    (bootstrap resamples); a row with a constant side has Pearson 0, as in ``pearson``."""
    if task.metric != "pearson":
        return (pred == gold).mean(axis=1)
    p = pred - pred.mean(axis=1, keepdims=True)
    g = gold - gold.mean(axis=1, keepdims=True)
    den = np.sqrt((p * p).sum(axis=1) * (g * g).sum(axis=1))
    num = (p * g).sum(axis=1)
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def normalised(task: Task, value: float) -> float:
    """Map a task metric onto [0, 1] for the dev score (Pearson r -> (r + 1) / 2)."""
    return (value + 1.0) / 2.0 if task.metric == "pearson" else value


def dev_score(metrics: dict[str, float], tasks: dict[str, Task]) -> float:
    """Average of the normalised task metrics (for sst/para/sts the formula inferred from the
    paper's Table 2, module docstring)."""
    vals = [normalised(tasks[name], v) for name, v in metrics.items()]
    vals = [v for v in vals if not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")
