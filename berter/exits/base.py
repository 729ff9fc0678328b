"""The exit-rule contract shared by the post-hoc tables and the real early-exit engine.

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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from berter.config import Config
from berter.metrics import predict
from berter.model.losses import task_loss
from berter.registry import Registry
from berter.tasks import Task

if TYPE_CHECKING:  # the model module imports transformers' BERT: not for a config check
    from berter.model.multi_exit import ExitOutput

State = dict[str, torch.Tensor]
# An exit rule's setting: one scalar for every layer, one per exit layer (n - 1 entries, the
# last layer always exits; None there: nothing exits at that layer), or None (no early exit).
Param = float | tuple[float | None, ...] | None
Thresholds = dict[str, Param]  # task -> its exit rule's setting

EXIT_METHODS = Registry("exit_method")  # filled by @EXIT_METHODS.register in berter.exits.rules


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

    def __post_init__(self) -> None:
        # read once as numbers: the engine's exit check reads nothing on the host but its
        # decision (a tensor element read per check would be one more host read each time)
        self._thresholds = (
            [float(v) for v in self.cos_threshold.tolist()] if self.cos_threshold is not None else None
        )

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
        return self._thresholds[i] if self._thresholds is not None else 0.5

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
@EXIT_METHODS.register("none")
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

    # The rule's comparison of signal with param (operator.ge, le, gt); None: never exits.
    fires_when: Callable[[torch.Tensor, float], torch.Tensor] | None = None

    def fires(self, signal: torch.Tensor, param: float | None) -> torch.Tensor:
        """Which examples exit now; ``param=None`` never fires."""
        if param is None or self.fires_when is None:
            return torch.zeros_like(signal, dtype=torch.bool)
        return self.fires_when(signal, param)

    def checked_layers(self, param: Param, num_layers: int) -> list[bool]:
        """Per layer below the last, whether the engine runs that exit's head and signal.

        Only where the rule can fire (a per-layer None cannot). A stateful signal (patience
        counts, Q-exit's halting mass) is also computed at the layers before the last one
        that can fire, which need it, but not after that one. Nowhere without early exit.
        The engine and the cost model (berter.exits.cost) both read this, so they agree.
        """
        fires = [
            not never_exits(param) and layer_param(param, i) is not None
            for i in range(num_layers - 1)
        ]
        if not self.stateful:
            return fires
        last = max((i for i, f in enumerate(fires) if f), default=-1)
        return [i <= last for i in range(num_layers - 1)]

    # --- post-hoc simulation --------------------------------------------------------
    def layer_signals(
        self, ctx: ExitContext, logits: list[torch.Tensor], pooled: list[torch.Tensor]
    ) -> torch.Tensor:
        """[n, N] signals of every example at every exit, from cached exit outputs."""
        from berter.model.multi_exit import ExitOutput

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
