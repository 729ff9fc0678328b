"""Exit methods: how a trained multi-exit model decides where to stop, and, for some,
what extra loss they add in training.

Every method exposes the same three things, so that the post-hoc trade-off tables and the
real early-exit engine (berter.infer) share one code path and cannot disagree:

- ``signal(ctx, i, out, state)``: a per-example number after exit ``i`` (0-based), computed
  from that exit's output and a small per-example ``state`` carried from earlier layers
  (patience counts, Q-exit's remaining halting mass). The state is a dict of tensors with
  one row per example, so the engine can drop exited rows from it.
- ``fires(signal, param)``: the exit rule, parameterised by one scalar (a threshold, a
  patience, a quantile q); ``param=None`` never fires (no early exit).
- ``grid(task, n)``: the default values of that scalar for the trade-off tables.

An operating param is that scalar for every layer, or with ``cfg.exit_per_layer`` one per
exit layer (``Param``; None at a layer: nothing exits there).

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

Post-hoc tables (``operating_point``): from one cached pass over a split (every exit's
logits and pooled vectors), each grid value's exit layer per example is simulated without
re-running the backbone. The operating point is chosen per task on the calibration slice
held out from the training data: the fastest grid value whose calibration metric is within
``cfg.exit_tolerance`` (relative) of the final layer's; dev metrics are reported there.
Per task, because each task's signal lives on its own scale (5-way vs. binary confidence,
LTE certainty for STS). When no setting qualifies, or a task has no calibration data, the
task runs to the last layer. ``cfg.exit_threshold``, when set, is used for every task
instead (it is the rule's scalar: a patience for ``patience``, q for ``qexit``). With
``cfg.exit_per_layer`` each task gets one value per exit layer instead, grown greedily
(``choose_per_layer``) and guarded by bootstrap resamples of the calibration slice.
``cfg.patience`` and ``cfg.qexit_q`` are those methods' defaults where nothing was
calibrated (the inference command line with another ``--method``).

A new exit method is one class here plus one entry in ``EXIT_METHODS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from berter.config import Config
from berter.data import Task
from berter.losses import per_example_loss, task_loss
from berter.metrics import dev_score, metric_column, predict, task_metric, task_metric_rows

if TYPE_CHECKING:  # the model module imports transformers' BERT: not for a config check
    from berter.model import ExitOutput

State = dict[str, torch.Tensor]
# An exit rule's setting: one scalar for every layer, one per exit layer (n - 1 entries, the
# last layer always exits; None there: nothing exits at that layer), or None (no early exit).
Param = float | tuple[float | None, ...] | None


def layer_param(param: Param, i: int) -> float | None:
    """The rule's scalar at exit ``i`` (0-based)."""
    if isinstance(param, tuple):
        return param[i] if i < len(param) else None
    return param


def never_exits(param: Param) -> bool:
    """True when no layer but the last can fire."""
    return param is None or (isinstance(param, tuple) and all(v is None for v in param))


# default grids of the exit rule's scalar, for the trade-off tables and the operating point
CONFIDENCE_GRID = (
    0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96,
    0.97, 0.98, 0.99, 0.995, 0.999,
)  # fmt: skip
ENTROPY_GRID = (
    0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4,
    0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.4,
)  # fmt: skip
CERTAINTY_GRID = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95,
    0.975, 0.99,
)  # fmt: skip
QUANTILE_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # q = 0.05 ... 0.95


@dataclass
class ExitContext:
    """What an exit rule needs besides one exit's output: the task and the model's extras."""

    task: Task
    num_layers: int
    module: nn.Module | None = None  # the method's trained module (LTE, Q-exit)
    siamese: bool = False  # pair task encoded siamese: exits output a cosine
    cos_threshold: torch.Tensor | None = None  # [n] siamese paraphrase decision thresholds

    @classmethod
    def from_model(cls, model: nn.Module, task: Task) -> ExitContext:
        return cls(
            task,
            model.num_layers,
            model.exit_module,
            bool(model.siamese and task.is_pair),
            model.cos_threshold.detach().cpu(),
        )

    def threshold(self, i: int) -> float:
        return float(self.cos_threshold[i]) if self.cos_threshold is not None else 0.5

    def predict(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """Exit i's predictions, exactly as the evaluation computes them."""
        return predict(self.task, logits.float(), self.siamese, self.threshold(i))

    def probs(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, C] of a classification exit (binary: [1 - p, p])."""
        logits = logits.float()
        if logits.dim() == 2:
            return F.softmax(logits, dim=-1)
        if self.siamese:
            p = (0.5 + (logits - self.threshold(i)) / 2).clamp(0.0, 1.0)
        else:
            p = torch.sigmoid(logits)
        return torch.stack([1 - p, p], dim=-1)

    def device(self) -> torch.device:
        if self.module is not None:
            for p in self.module.parameters():
                return p.device
        return torch.device("cpu")


def select_state(state: State, rows: torch.Tensor) -> State:
    """Keep the state of some examples only (the engine drops exited rows)."""
    return {k: v[rows] for k, v in state.items()}


# ----------------------------------------------------------------------------- methods
class ExitMethod:
    """Base class and ``none``: always the last layer; the loss is the plain sum of L_i."""

    name = "none"
    # the signal carries state from layer to layer (patience counts, halting mass): the
    # engine must compute it at every layer, even where the rule cannot fire
    stateful = False

    def __init__(self, cfg: Config):
        self.cfg = cfg

    # --- training -------------------------------------------------------------------
    def build_module(self, hidden: int, tasks: list[Task]) -> nn.Module | None:
        """Extra trainable module the method owns (LTE, Q-exit), stored on the model."""
        return None

    def module_lr(self) -> float | None:
        """Learning rate of that module, when it has its own."""
        return None

    def training_loss(
        self,
        task: Task,
        outs: list[ExitOutput],
        labels: torch.Tensor,
        exits: tuple[int, ...],
        module: nn.Module | None,
    ) -> torch.Tensor:
        """Loss over the exits the strategy trains at this step."""
        return sum(task_loss(task, outs[i], labels, self.cfg.cos_margin) for i in exits)

    # --- exit rule ------------------------------------------------------------------
    def grid(self, task: Task, num_layers: int) -> list[float]:
        """Default values of the rule's scalar; empty: the method never exits early."""
        return []

    def default_param(self, task: Task) -> float | None:
        """The scalar to use when none was calibrated (None: no early exit)."""
        return None

    def signal(
        self, ctx: ExitContext, i: int, out: ExitOutput, state: State
    ) -> tuple[torch.Tensor, State]:
        return torch.zeros(out.logits.shape[0], device=out.logits.device), state

    def fires(self, signal: torch.Tensor, param: float | None) -> torch.Tensor:
        """Which examples exit now; ``param=None`` never fires."""
        return torch.zeros_like(signal, dtype=torch.bool)

    # --- post-hoc simulation --------------------------------------------------------
    def layer_signals(
        self, ctx: ExitContext, logits: list[torch.Tensor], pooled: list[torch.Tensor]
    ) -> torch.Tensor:
        """[n, N] signals of every example at every exit, from cached exit outputs."""
        from berter.model import ExitOutput

        device = ctx.device()
        state: State = {}
        sig = []
        with torch.no_grad():
            for i in range(len(logits)):
                out = ExitOutput(logits[i].to(device), pooled[i].to(device))
                s, state = self.signal(ctx, i, out, state)
                sig.append(s.float().cpu())
        return torch.stack(sig) if sig else torch.zeros(0, 0)

    def exit_layers(self, signals: torch.Tensor, param: Param) -> np.ndarray:
        """0-based exit layer of every example: the first layer whose rule fires, else the last."""
        if isinstance(param, tuple):
            fire = np.stack(
                [
                    self.fires(signals[i], layer_param(param, i)).cpu().numpy()
                    for i in range(len(signals))
                ]
            )
        else:
            fire = self.fires(signals, param).cpu().numpy().copy()
        fire[-1] = True
        return fire.argmax(axis=0)


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

    def fires(self, signal: torch.Tensor, param: float | None) -> torch.Tensor:
        if param is None:
            return torch.zeros_like(signal, dtype=torch.bool)
        return signal >= param


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

    def fires(self, signal: torch.Tensor, param: float | None) -> torch.Tensor:
        if param is None:
            return torch.zeros_like(signal, dtype=torch.bool)
        return signal <= param


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

    def fires(self, signal: torch.Tensor, param: float | None) -> torch.Tensor:
        if param is None:
            return torch.zeros_like(signal, dtype=torch.bool)
        return signal >= param


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

    def fires(self, signal: torch.Tensor, param: float | None) -> torch.Tensor:
        if param is None:
            return torch.zeros_like(signal, dtype=torch.bool)
        return signal >= param


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

    def fires(self, signal: torch.Tensor, param: float | None) -> torch.Tensor:
        if param is None:
            return torch.zeros_like(signal, dtype=torch.bool)
        return signal > param


class Berter(LearnToExit):
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


EXIT_METHODS: dict[str, type[ExitMethod]] = {
    "none": ExitMethod,
    "confidence": Confidence,
    "entropy": Entropy,
    "lte": LearnToExit,
    "patience": Patience,
    "qexit": QExit,
    "berter": Berter,
}


def build_exit_method(cfg: Config) -> ExitMethod:
    return EXIT_METHODS[cfg.exit_method](cfg)


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
    """The fastest param whose metric is within ``tolerance`` (relative) of ``final``.

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


CALIB_RESAMPLES = 200  # bootstrap resamples of the calibration slice for per-layer choice


def choose_per_layer(
    method: ExitMethod,
    ctx: ExitContext,
    te: Any,
    grid: list[float],
    tolerance: float,
    confidence: float,
    resamples: int = CALIB_RESAMPLES,
) -> tuple[float | None, ...] | None:
    """One setting per exit layer, grown greedily on a calibration split (a TaskEval).

    Starting from no early exit, each step sets one layer to the grid value that saves the
    most layers per point of metric lost, among the changes that keep the calibration metric
    within ``tolerance`` (relative) of the final layer's, both on the whole slice and in at
    least ``confidence`` of its bootstrap resamples (paired: a resample scores the final
    layer on the same examples). Choosing n - 1 values fits the slice's noise far more than
    one shared value does; the resample guard keeps the dev metric near the slice's. None
    when no layer can exit early.
    """
    n, task = ctx.num_layers, ctx.task
    final = te.final
    if n < 2 or len(te.labels) == 0 or math.isnan(final) or not grid:
        return None
    signals = method.layer_signals(ctx, te.logits, te.pooled)
    preds = np.stack(te.preds)  # [n, N]
    gold = np.asarray(te.labels)
    cols = np.arange(len(gold))
    rows = np.random.default_rng(0).integers(0, len(gold), (resamples, len(gold)))
    gold_r = gold[rows]
    final_r = task_metric_rows(task, preds[-1][rows], gold_r)
    floor_r = final_r - tolerance * np.abs(final_r)
    floor = final - tolerance * abs(final)
    current: tuple[float | None, ...] = (None,) * (n - 1)
    metric, layer = final, float(n)
    while True:
        best = None
        for i in range(n - 1):
            for value in grid:
                if value == current[i]:
                    continue
                cand = current[:i] + (value,) + current[i + 1 :]
                exit_at = method.exit_layers(signals, cand)
                avg = float(exit_at.mean() + 1)
                if avg >= layer - 1e-9:
                    continue
                pred = preds[exit_at, cols]
                m = task_metric(task, pred, gold)
                if math.isnan(m) or m < floor:
                    continue
                gain = (layer - avg) / max(metric - m, 1e-4)
                if best is not None and gain <= best[0]:
                    continue
                kept = task_metric_rows(task, pred[rows], gold_r) >= floor_r
                if kept.mean() < confidence:
                    continue
                best = (gain, cand, m, avg)
        if best is None:
            break
        _, current, metric, layer = best
    return None if never_exits(current) else current


def _contexts(run: Any) -> dict[str, ExitContext]:
    return {t.name: ExitContext.from_model(run.model, t) for t in run.tasks}


def calibrate(run: Any, calib: Any = None) -> dict[str, Param]:
    """Per-task operating param chosen on the calibration slice (``cfg.exit_threshold`` wins)."""
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
        if cfg.exit_per_layer:
            chosen[t.name] = choose_per_layer(
                method, ctxs[t.name], te, grid, cfg.exit_tolerance, cfg.exit_confidence
            )
        else:
            chosen[t.name] = choose(
                simulate(method, ctxs[t.name], te, grid), te.final, cfg.exit_tolerance
            )
    return chosen


def operating_point(run: Any, dev: Any, calib: Any = None) -> dict[str, Any]:
    """Early-exit metrics of one evaluation: dev metrics at the calibrated operating point,
    the average exit layer, and the full trade-off table (``exit_table``). ``calib``: the
    calibration slice's evaluation, when the caller already has it.

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
    chosen = calibrate(run, calib)
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
