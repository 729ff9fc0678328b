"""Scoring a run: every exit on a split from one pass, and the metric row reported per epoch.

One forward pass per batch yields every exit's output; outputs stay on the device until a
task's last batch (one copy to the host per task, not per batch). The dev score per layer,
the siamese paraphrase threshold and the early-exit operating point
(berter.exits.calibration) all read these cached outputs, never the model again.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from berter.data.encode import EncodedSplit, make_batches
from berter.exits.calibration import operating_point
from berter.metrics import dev_score, predict, task_metric
from berter.model.multi_exit import MultiExitBert
from berter.tasks import Task, metric_column

EVAL_BATCH = 64


class Scored(Protocol):
    """What evaluation reads of a run (``berter.train.run.TrainingRun`` has it all)."""

    model: MultiExitBert
    device: torch.device
    tasks: list[Task]
    encoded: dict[str, dict[str, EncodedSplit]]

    def autocast(self) -> AbstractContextManager: ...

    def evaluate(self, split: str = "dev") -> Evaluation: ...


@dataclass
class TaskEval:
    """Every exit's output on one split of one task, in the split's example order."""

    task: Task
    labels: np.ndarray  # [N]
    logits: list[torch.Tensor]  # per exit, [N] or [N, C], float32 on CPU
    pooled: list[torch.Tensor]  # per exit, [N, H]
    preds: list[np.ndarray]  # per exit
    metrics: list[float]  # per exit
    siamese: bool = False

    @property
    def final(self) -> float:
        return self.metrics[-1]


@dataclass
class Evaluation:
    """Every task's :class:`TaskEval` on one split."""

    tasks: dict[str, TaskEval]
    num_layers: int

    def score_at(self, layer: int) -> float:
        """Dev score if every example exited at ``layer`` (0-based)."""
        return dev_score({n: t.metrics[layer] for n, t in self.tasks.items()}, self.task_defs)

    @property
    def task_defs(self) -> dict[str, Task]:
        return {n: t.task for n, t in self.tasks.items()}

    @property
    def dev_score(self) -> float:
        return self.score_at(self.num_layers - 1)

    @property
    def layer_scores(self) -> list[float]:
        return [self.score_at(i) for i in range(self.num_layers)]


@torch.no_grad()
def evaluate(run: Scored, split: str = "dev") -> Evaluation:
    """Score every exit on a split from one pass over it."""
    run.model.eval()
    if run.model.siamese and "para" in run.model.tasks and split != "calib":
        calibrate_cos_threshold(run)
    out = {task.name: eval_task(run, task, run.encoded[task.name][split]) for task in run.tasks}
    return Evaluation(out, run.model.num_layers)


@torch.no_grad()
def eval_task(run: Scored, task: Task, enc: EncodedSplit) -> TaskEval:
    """Every exit's logits, pooled vectors, predictions and metric on one encoded split."""
    model = run.model
    n_layers = model.num_layers
    n = len(enc.labels)
    logits: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    pooled: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    order = []
    siamese = model.siamese and task.is_pair
    for batch in make_batches(enc, EVAL_BATCH, shuffle=False, seed=0):
        order.append(batch.index)
        batch = batch.to(run.device)
        with run.autocast():
            outs = model(batch)
        for i, o in enumerate(outs):  # kept on the device: one copy to the host at the end
            logits[i].append(o.logits.float())
            pooled[i].append(o.pooled.float())
    if n == 0:
        return TaskEval(task, np.zeros(0), [], [], [], [float("nan")] * n_layers, siamese)
    inv = torch.empty(n, dtype=torch.long)
    inv[torch.cat(order)] = torch.arange(n)
    labels = np.asarray(enc.labels, dtype=np.float64)
    lg = [torch.cat(x).cpu()[inv] for x in logits]
    pl = [torch.cat(x).cpu()[inv] for x in pooled]
    thresholds = model.cos_threshold.cpu()
    preds = [
        predict(task, lg[i], siamese, float(thresholds[i])).numpy() for i in range(n_layers)
    ]
    metrics = [task_metric(task, p, labels) for p in preds]
    return TaskEval(task, labels, lg, pl, preds, metrics, siamese)


@torch.no_grad()
def calibrate_cos_threshold(run: Scored) -> None:
    """Siamese paraphrase: per exit, the cosine threshold that is most accurate on training data."""
    enc = run.encoded["para"]["calib"]
    if not enc.labels:
        enc = run.encoded["para"]["train"]
    ev = eval_task(run, run.model.tasks["para"], enc)
    gold = ev.labels
    for i, cos in enumerate(ev.logits):
        cands = torch.linspace(-1, 1, 201)
        acc = ((cos[None, :] > cands[:, None]).numpy() == gold[None, :]).mean(1)
        run.model.cos_threshold[i] = float(cands[int(acc.argmax())])


def metric_row(run: Scored, dev: Evaluation) -> dict[str, Any]:
    """The flat metric dict reported per epoch (and written to the results): the dev score,
    each task's metric at the last exit and at every exit, and the early-exit operating point
    with its trade-off tables (berter.exits.calibration)."""
    row: dict[str, Any] = {"dev_score": dev.dev_score}
    for t in dev.tasks.values():
        row[metric_column(t.task)] = t.final
        row[f"{metric_column(t.task)}_layers"] = [float(m) for m in t.metrics]
    scores = dev.layer_scores
    row["dev_score_mean_exits"] = float(np.mean(scores))
    row["best_layer"] = int(np.argmax(scores)) + 1
    row["layer_scores"] = scores
    row.update(operating_point(run, dev))
    return row
