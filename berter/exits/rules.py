"""The exit methods, one class each, registered by name.

The last layer always exits. Methods and their rules:

- ``none``: always the last layer.
- ``confidence``: max class probability >= t (paraphrase: max(p, 1 - p)).
- ``entropy`` (DeeBERT): prediction entropy (nats) <= t.
- ``lte`` (BERxiT learning-to-exit): learned certainty u_i >= t.
- ``patience`` (PABEE): t consecutive layers agree with their predecessor.
- ``qexit`` (PALBERT): cumulative halting probability > q.
- ``berter``: confidence for classification tasks, LTE for regression tasks.

Confidence and entropy have no signal for regression (STS): there they never exit early,
so an STS prediction always comes from the last layer. Siamese paraphrase exits output a
cosine, not a logit; their "probability" is 0.5 at the exit's calibrated cosine threshold
and moves linearly with the margin (p = clamp(0.5 + (cos - thr) / 2, 0, 1)).

LTE and Q-exit modules are shared by all layers, one per task: each task's exit heads have
their own pooler, so the pooled vectors of different tasks live in different spaces.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from berter.config import Config
from berter.exits.base import (
    CERTAINTY_GRID,
    CONFIDENCE_GRID,
    ENTROPY_GRID,
    EXIT_METHODS,
    QUANTILE_GRID,
    ExitContext,
    ExitMethod,
    State,
)
from berter.metrics import predict
from berter.model.losses import per_example_loss, task_loss
from berter.tasks import Task

if TYPE_CHECKING:  # the model module imports transformers' BERT: not for a config check
    from berter.model.multi_exit import ExitOutput



@EXIT_METHODS.register("confidence")
class Confidence(ExitMethod):
    """Exit when the max class probability reaches the threshold (BERxiT, FastBERT)."""

    name = "confidence"

    def grid(self, task: Task, num_layers: int) -> list[float]:
        return [] if task.is_regression else list(CONFIDENCE_GRID)

    def signal(
        self, ctx: ExitContext, i: int, out: ExitOutput, state: State
    ) -> tuple[torch.Tensor, State]:
        if ctx.task.is_regression:  # no class distribution: never exits early
            return torch.full((out.logits.shape[0],), -math.inf, device=out.logits.device), state
        return ctx.probs(i, out.logits).max(-1).values, state

    fires_when = staticmethod(operator.ge)


@EXIT_METHODS.register("entropy")
class Entropy(ExitMethod):
    """Exit when the prediction entropy (nats) falls to the threshold (DeeBERT)."""

    name = "entropy"

    def grid(self, task: Task, num_layers: int) -> list[float]:
        if task.is_regression:
            return []
        return [t for t in ENTROPY_GRID if t < math.log(max(task.num_labels, 2))]

    def signal(
        self, ctx: ExitContext, i: int, out: ExitOutput, state: State
    ) -> tuple[torch.Tensor, State]:
        if ctx.task.is_regression:
            return torch.full((out.logits.shape[0],), math.inf, device=out.logits.device), state
        p = ctx.probs(i, out.logits)
        return -(p * p.clamp(min=1e-12).log()).sum(-1), state

    fires_when = staticmethod(operator.le)


@EXIT_METHODS.register("lte")
class LearnToExit(ExitMethod):
    """BERxiT learning-to-exit: u_i = sigmoid(c . pooled_i + b), exit when u_i >= threshold.

    One linear module per task, shared by all of that task's layers, trained with
    J_i = MSE(u_i, target_i), the target a label (detached): 1[prediction correct] for
    classification, 1 - tanh(|y_hat - y|) for regression.

    Which J: BERxiT's reference code (castorini/berxit, transformers/modeling_highway_bert.py,
    ``BertForSequenceClassification.forward``, train_strategy ``alternate-lte``) adds the
    MSE over the certainties of all n layers, the mean of J_1..J_n, to every step's
    classification loss, also on the steps whose classification loss is L_n alone. So by
    default a step's loss is the sum of L_i over the exits the strategy trains plus the mean
    of J_i over all n exits. ``cfg.exit_module_trained_only`` follows the paper's wording
    instead (BERxiT section 4.2, "substituting L_i ... with L_i + J_i"): the sum of L_i + J_i
    over the trained exits only.

    Gradient: as in the reference, whose ``BertEncoder.forward`` feeds each exit's pooled
    output to the LTE classifier undetached (only the label is detached), J_i reaches the
    module and, through pooled_i, exit head i and the layers below it: those of them the
    strategy leaves trainable at that step.
    """

    name = "lte"

    def lte_tasks(self, tasks: list[Task]) -> list[Task]:
        return list(tasks)

    def build_module(self, hidden: int, tasks: list[Task]) -> nn.Module | None:
        chosen = self.lte_tasks(tasks)
        if not chosen:
            return None
        return nn.ModuleDict({t.name: nn.Linear(hidden, 1) for t in chosen})

    def module_lr(self) -> float | None:
        return self.cfg.lte_lr

    def certainty(self, module: nn.Module, task: Task, out: ExitOutput) -> torch.Tensor:
        return torch.sigmoid(module[task.name](out.pooled.float()).squeeze(-1))

    def certainty_target(self, task: Task, out: ExitOutput, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            # siamese paraphrase at train time: the configured initial cosine threshold
            pred = predict(task, out.logits.float(), out.pair is not None, self.cfg.cos_threshold)
            if task.is_regression:
                return 1.0 - torch.tanh((pred - labels.float()).abs())
            return (pred == labels.long()).float()

    def training_loss(
        self,
        task: Task,
        outs: list[ExitOutput],
        labels: torch.Tensor,
        exits: tuple[int, ...],
        module: nn.Module | None,
    ) -> torch.Tensor:
        if module is None or task.name not in module:
            return super().training_loss(task, outs, labels, exits, module)
        loss = super().training_loss(task, outs, labels, exits, module)
        if self.cfg.exit_module_trained_only:
            return loss + sum(self.certainty_loss(module, task, outs[i], labels) for i in exits)
        j = [self.certainty_loss(module, task, out, labels) for out in outs]
        return loss + torch.stack(j).mean()

    def certainty_loss(
        self, module: nn.Module, task: Task, out: ExitOutput, labels: torch.Tensor
    ) -> torch.Tensor:
        """J_i: MSE between exit i's certainty and its detached target."""
        return F.mse_loss(
            self.certainty(module, task, out), self.certainty_target(task, out, labels)
        )

    def grid(self, task: Task, num_layers: int) -> list[float]:
        return list(CERTAINTY_GRID)

    def signal(
        self, ctx: ExitContext, i: int, out: ExitOutput, state: State
    ) -> tuple[torch.Tensor, State]:
        return self.certainty(ctx.module, ctx.task, out), state

    fires_when = staticmethod(operator.ge)


@EXIT_METHODS.register("patience")
class Patience(ExitMethod):
    """PABEE: exit once ``patience`` consecutive layers agree with the layer before them.

    Agreement is the same predicted class, or for regression |y_i - y_{i-1}| <
    ``cfg.regression_delta``. The signal is the current run of agreements (0 at layer 1), so
    the earliest possible exit with patience t is layer t + 1. Training weights exit i's loss
    by its 1-based depth: sum(i * L_i) / sum(i) over the exits the strategy trains.
    """

    name = "patience"
    stateful = True

    def training_loss(
        self,
        task: Task,
        outs: list[ExitOutput],
        labels: torch.Tensor,
        exits: tuple[int, ...],
        module: nn.Module | None,
    ) -> torch.Tensor:
        weights = [i + 1 for i in exits]
        total = sum(
            w * task_loss(task, outs[i], labels, self.cfg.cos_margin)
            for w, i in zip(weights, exits, strict=True)
        )
        return total / sum(weights)

    def grid(self, task: Task, num_layers: int) -> list[float]:
        return [float(t) for t in range(1, num_layers)]

    def default_param(self, task: Task) -> float | None:
        return float(self.cfg.patience)

    def signal(
        self, ctx: ExitContext, i: int, out: ExitOutput, state: State
    ) -> tuple[torch.Tensor, State]:
        pred = ctx.predict(i, out.logits)
        if i == 0 or "pred" not in state:
            count = torch.zeros(pred.shape[0], device=pred.device)
        else:
            prev = state["pred"]
            if ctx.task.is_regression:
                agree = (pred.float() - prev.float()).abs() < self.cfg.regression_delta
            else:
                agree = pred == prev
            count = torch.where(agree, state["count"] + 1, torch.zeros_like(state["count"]))
        return count, {"pred": pred, "count": count}

    fires_when = staticmethod(operator.ge)


class LambdaNet(nn.Module):
    """PALBERT's Lambda layer: 3 x (Linear + tanh), then Linear, on [pooled_i, pooled_{i-1}]."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, pooled: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """The halting logit z_i (lambda_i = sigmoid(z_i)), shape [B]."""
        return self.net(torch.cat([pooled, prev], dim=-1).float()).squeeze(-1)


@EXIT_METHODS.register("qexit")
class QExit(ExitMethod):
    """PALBERT: PonderNet halting distribution, deterministic Q-exit at inference.

    lambda_i = Lambda([pooled_i, pooled_{i-1}]) (pooled_0 = zeros; pooled is the exit head's
    pooled vector), p(i) = lambda_i prod_{j<i}(1 - lambda_j), the last exit takes the
    remaining mass. PALBERT's loss over a set of exits: E_p[L_i] + beta KL(p || geometric
    prior(lambda_p) truncated to those exits, the last one taking the remaining mass), per
    example, averaged. Inference exits at the first layer whose cumulative halting
    probability exceeds q.

    PALBERT's code trains on all n exits at every step (tinkoff-ai/palbert: the expectation
    in src/modeling/palbert_fast.py ``PAlbertForSequenceClassification.forward``, the KL in
    src/trainer.py ``_step`` with src/loss.py ``RegularizationLoss``), the Lambda input
    undetached unless ``--detach-lambda`` (``PAlbertModel.layer_positional_embeddings_forward``).
    A step that trains every exit uses exactly that loss. A step that trains a subset S
    (Alternating's L_n steps, Two-stage, SLF's slices) uses, by default, the plain sum of L_i
    over S plus PALBERT's loss over all n exits with every task loss in it detached, so the
    halting module learns from every layer at every step, as BERxiT's LTE does, while the
    exits' classification losses are the strategy's. The Lambda input stays undetached, so
    its gradient reaches the layers beneath when they are trainable.
    ``cfg.exit_module_trained_only`` instead takes the halting distribution over S only (in
    depth order, the last exit of S taking the remaining mass): on an L_n-only step that is
    a point mass on the last exit, the loss is exactly L_n and Lambda gets no gradient.
    """

    name = "qexit"
    stateful = True

    def build_module(self, hidden: int, tasks: list[Task]) -> nn.Module | None:
        return nn.ModuleDict({t.name: LambdaNet(hidden) for t in tasks})

    def module_lr(self) -> float | None:
        return self.cfg.lambda_lr

    def halting_logits(
        self, module: nn.Module, task: Task, outs: list[ExitOutput], exits: list[int]
    ) -> torch.Tensor:
        """[len(exits), B] halting logits of the given exits (each reads its predecessor layer)."""
        z = []
        for i in exits:
            pooled = outs[i].pooled
            prev = outs[i - 1].pooled if i > 0 else torch.zeros_like(pooled)
            z.append(module[task.name](pooled, prev))
        return torch.stack(z)

    def log_prior(self, m: int, device: torch.device) -> torch.Tensor:
        """log of the geometric prior over m exits, the last taking the remaining mass."""
        lam = self.cfg.qexit_prior
        k = torch.arange(m, dtype=torch.float32, device=device)
        logp = math.log(lam) + k * math.log1p(-lam)
        logp[-1] = (m - 1) * math.log1p(-lam)
        return logp

    @staticmethod
    def log_halting(z: torch.Tensor) -> torch.Tensor:
        """log p(i) [m, B] from the halting logits of the first m - 1 exits [m - 1, B]."""
        log_stay = F.logsigmoid(-z)  # log(1 - lambda)
        before = torch.cumsum(log_stay, 0) - log_stay  # sum_{j<i} log(1 - lambda_j)
        last = log_stay.sum(0, keepdim=True)
        return torch.cat([F.logsigmoid(z) + before, last])

    def training_loss(
        self,
        task: Task,
        outs: list[ExitOutput],
        labels: torch.Tensor,
        exits: tuple[int, ...],
        module: nn.Module | None,
    ) -> torch.Tensor:
        chosen = sorted(exits)
        every = list(range(len(outs)))
        if self.cfg.exit_module_trained_only or chosen == every:
            return self.ponder_loss(task, outs, labels, chosen, module)
        loss = super().training_loss(task, outs, labels, exits, module)
        return loss + self.ponder_loss(task, outs, labels, every, module, detach_losses=True)

    def ponder_loss(
        self,
        task: Task,
        outs: list[ExitOutput],
        labels: torch.Tensor,
        chosen: list[int],
        module: nn.Module | None,
        detach_losses: bool = False,
    ) -> torch.Tensor:
        """E_p[L_i] + beta KL over the exits ``chosen`` (ascending); with ``detach_losses``
        it trains the halting module only (and what its input reads)."""
        losses = torch.stack(
            [per_example_loss(task, outs[i], labels, self.cfg.cos_margin) for i in chosen]
        )
        if detach_losses:
            losses = losses.detach()
        if len(chosen) == 1:  # point mass: the plain task loss
            return losses[0].mean()
        z = self.halting_logits(module, task, outs, chosen[:-1])
        log_p = self.log_halting(z.float())
        p = log_p.exp()
        expected = (p * losses).sum(0).mean()
        kl = (p * (log_p - self.log_prior(len(chosen), log_p.device)[:, None])).sum(0).mean()
        return expected + self.cfg.qexit_beta * kl

    def grid(self, task: Task, num_layers: int) -> list[float]:
        return list(QUANTILE_GRID)

    def default_param(self, task: Task) -> float | None:
        return float(self.cfg.qexit_q)

    def signal(
        self, ctx: ExitContext, i: int, out: ExitOutput, state: State
    ) -> tuple[torch.Tensor, State]:
        """Cumulative halting probability after exit i: 1 - prod_{j<=i}(1 - lambda_j)."""
        pooled = out.pooled
        prev = state.get("pooled")
        if prev is None or i == 0:
            prev = torch.zeros_like(pooled)
            log_stay = torch.zeros(pooled.shape[0], device=pooled.device)
        else:
            log_stay = state["log_stay"]
        if i == ctx.num_layers - 1:  # the last exit takes the remaining mass
            cdf = torch.ones_like(log_stay)
        else:
            z = ctx.module[ctx.task.name](pooled, prev)
            log_stay = log_stay + F.logsigmoid(-z)
            cdf = 1.0 - log_stay.exp()
        return cdf, {"pooled": pooled, "log_stay": log_stay}

    fires_when = staticmethod(operator.gt)


@EXIT_METHODS.register("berter")
class Hybrid(LearnToExit):
    """BERTer's hybrid: confidence for classification tasks, LTE for regression tasks.

    Only regression tasks get an LTE module (and its J_i loss); classification tasks train
    with the plain sum of their task losses.
    """

    name = "berter"

    def lte_tasks(self, tasks: list[Task]) -> list[Task]:
        return [t for t in tasks if t.is_regression]

    def grid(self, task: Task, num_layers: int) -> list[float]:
        return list(CERTAINTY_GRID) if task.is_regression else list(CONFIDENCE_GRID)

    def signal(
        self, ctx: ExitContext, i: int, out: ExitOutput, state: State
    ) -> tuple[torch.Tensor, State]:
        if ctx.task.is_regression:
            return self.certainty(ctx.module, ctx.task, out), state
        return ctx.probs(i, out.logits).max(-1).values, state


def build_exit_method(cfg: Config) -> ExitMethod:
    return EXIT_METHODS.get_class(cfg.exit_method)(cfg)
