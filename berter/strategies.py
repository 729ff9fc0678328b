"""Fine-tuning strategies: which exits' losses count, and which weights move, at each step.

With L_i the summed task loss of exit i (1-based in the papers, 0-based here) and n
layers, a strategy answers the training loop's questions:
- ``epoch_phase(epoch)``: the phase that epoch belongs to. A new phase gets a fresh
  optimizer and learning-rate schedule (two-stage's second stage, SLF -> main).
- ``step(epoch, step, num_steps)``: a :class:`StepPlan`, the exits whose losses are summed,
  the parameters that are trainable (None = all) and whether the last exit may teach the
  others (``cfg.exit_distill``).
- ``lr_segments(phase, total_steps)``: the runs of a phase's steps that each get their own
  linear warmup and decay (one run, the whole phase, except in SLF's leading epoch).
``end_epoch(epoch, dev_score)`` lets a strategy react to validation (smart alternating).
A new strategy is one class here, decorated with ``@STRATEGIES.register(name)``.

Strategies (papers: DeeBERT / BERxiT for two_stage and alternating, BERTer for smart_alt and
Sequential Layer Focus):
- ``final``: L_n only (plain fine-tuning; intermediate heads stay untrained).
- ``joint``: sum of L_i at every step.
- ``two_stage``: backbone + final heads on L_n, then, frozen, the intermediate heads on
  sum_{i<n} L_i, each stage ``cfg.epochs`` epochs with its own optimizer.
- ``alternating``: L_n on even steps, sum of L_i on odd steps (BERxiT's odd/even iterations,
  counted from 1 there).
- ``smart_alt``: one objective per epoch, L_n first; after each validation keep it if the
  dev score improved, else switch to the other.
- ``slf=on`` wraps any of them in :class:`SequentialLayerFocus`: one leading epoch that trains
  encoder layer i and exit head i on L_i, layer by layer, each layer's slice with its own
  learning-rate warmup and decay, before the main strategy.

Trainable sets are frozensets of parameter names (``model.named_parameters()``), built once;
the loop re-applies ``requires_grad`` only when the set object changes. Parameters of the exit
method's own module (LTE, Q-exit) are trainable whenever an exit is trained: the module is an
exit-decision component shared by all layers, like a classifier rather than part of the
backbone, and freezing it after a final-layer-only stage would leave it fit to the one layer
where it is never consulted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from berter.config import Config
from berter.errors import ConfigError
from berter.registry import Registry

STRATEGIES = Registry("strategy")  # filled by @STRATEGIES.register below


@dataclass(frozen=True)
class StepPlan:
    exits: tuple[int, ...]  # 0-based exit indices whose losses are summed
    trainable: frozenset[str] | None = None  # names of parameters to update; None = all
    teacher: bool = True  # the last exit is trained enough to teach the others (exit_distill)


def parameter_names(model: nn.Module, params: Iterable[nn.Parameter]) -> frozenset[str]:
    """Names (as in ``model.named_parameters()``) of the given parameter objects."""
    ids = {id(p) for p in params}
    return frozenset(name for name, p in model.named_parameters() if id(p) in ids)


def exit_module_parameters(model: nn.Module) -> list[nn.Parameter]:
    module = getattr(model, "exit_module", None)
    return list(module.parameters()) if module is not None else []


def all_but_intermediate_heads(model: nn.Module) -> frozenset[str]:
    """Backbone, final heads and exit module: what L_n trains (BERxiT Eq. 4 and 6)."""
    n = model.num_layers
    heads = parameter_names(model, (p for i in range(n - 1) for p in model.head_parameters(i)))
    return frozenset(name for name, _ in model.named_parameters()) - heads


class Strategy:
    """Base class: one phase, all weights trainable, the final exit only."""

    name = "base"
    min_layers = 1

    def __init__(self, cfg: Config, model: nn.Module):
        self.cfg = cfg
        self.n = int(model.num_layers)
        self.check_layers(self.n)

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Reject variant axes this strategy cannot train (called by ``Config.validate``)."""

    @classmethod
    def check_layers(cls, num_layers: int) -> None:
        """Reject a backbone (after ``drop_top``) with too few layers for this strategy."""
        if num_layers < cls.min_layers:
            raise ConfigError(
                f"strategy={cls.name} needs at least {cls.min_layers} encoder layers "
                f"(check drop_top)"
            )

    @classmethod
    def epochs_for(cls, cfg: Config) -> int:
        """Reported epochs (training passes) for ``cfg.epochs``, known before a model exists
        (the sweep driver sizes ASHA's time axis with it)."""
        return int(cfg.epochs)

    @property
    def num_epochs(self) -> int:
        return self.epochs_for(self.cfg)

    def epoch_phase(self, epoch: int) -> str:
        return "main"

    def epoch_fraction(self, epoch: int) -> float:
        """Fraction of an epoch's batches this epoch visits (SLF uses a slice)."""
        return 1.0

    def lr_segments(self, phase: str, total_steps: int) -> list[int]:
        """Lengths of the consecutive runs of a phase's ``total_steps`` steps that each get
        their own linear warmup and decay; by default one run, the whole phase."""
        return [total_steps]

    def step(self, epoch: int, step: int, num_steps: int) -> StepPlan:
        return StepPlan(exits=(self.n - 1,))

    def end_epoch(self, epoch: int, dev_score: float) -> None:
        """Called after each epoch's validation."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@STRATEGIES.register("final")
class Final(Strategy):
    """Only L_n: the baseline; intermediate heads stay untrained."""

    name = "final"


@STRATEGIES.register("joint")
class Joint(Strategy):
    """Sum of L_i over all exits at every step."""

    name = "joint"

    def step(self, epoch: int, step: int, num_steps: int) -> StepPlan:
        return StepPlan(exits=tuple(range(self.n)))


@STRATEGIES.register("two_stage")
class TwoStage(Strategy):
    """DeeBERT's two stages: keep the final layer's quality, then fit the other exits to it.

    Stage 1 (``cfg.epochs`` epochs): backbone + final heads on L_n. Stage 2 (``cfg.epochs``
    epochs, fresh optimizer and schedule): everything stage 1 trained is frozen, and only the
    intermediate heads (plus the exit module, see the module docstring) learn sum_{i<n} L_i.
    """

    name = "two_stage"
    min_layers = 2

    def __init__(self, cfg: Config, model: nn.Module):
        super().__init__(cfg, model)
        heads = [p for i in range(self.n - 1) for p in model.head_parameters(i)]
        self.stage1 = all_but_intermediate_heads(model)
        self.stage2 = parameter_names(model, heads + exit_module_parameters(model))

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        if cfg.cos_loss == "on":
            raise ConfigError(
                "strategy=two_stage conflicts with cos_loss=on: siamese pair exits have no head, "
                "so the second stage (frozen backbone) would have nothing to train for pair tasks"
            )

    @classmethod
    def epochs_for(cls, cfg: Config) -> int:
        return 2 * int(cfg.epochs)

    def epoch_phase(self, epoch: int) -> str:
        return "stage1" if epoch < int(self.cfg.epochs) else "stage2"

    def step(self, epoch: int, step: int, num_steps: int) -> StepPlan:
        if self.epoch_phase(epoch) == "stage1":
            return StepPlan(exits=(self.n - 1,), trainable=self.stage1)
        return StepPlan(exits=tuple(range(self.n - 1)), trainable=self.stage2)


@STRATEGIES.register("alternating")
class Alternating(Strategy):
    """BERxiT: L_n on even steps, sum of L_i on odd steps; the step count restarts each epoch.

    L_n steps train backbone + final heads (Eq. 6), the others everything (Eq. 7).
    """

    name = "alternating"

    def __init__(self, cfg: Config, model: nn.Module):
        super().__init__(cfg, model)
        self.final_only = all_but_intermediate_heads(model)

    def step(self, epoch: int, step: int, num_steps: int) -> StepPlan:
        if step % 2 == 0:
            return StepPlan(exits=(self.n - 1,), trainable=self.final_only)
        return StepPlan(exits=tuple(range(self.n)))


@STRATEGIES.register("smart_alt")
class SmartAlternating(Strategy):
    """BERTer's Smart Alternating: one objective per epoch, switched by validation.

    Starts with L_n (backbone + final heads); after each epoch's dev evaluation it keeps the
    objective if the dev score improved on the best so far, otherwise it switches between L_n
    and sum of L_i. The state (objective, best score) is checkpointed.
    """

    name = "smart_alt"
    OBJECTIVES = ("final", "all")

    def __init__(self, cfg: Config, model: nn.Module):
        super().__init__(cfg, model)
        self.final_only = all_but_intermediate_heads(model)
        self.objective = "final"
        self.best: float | None = None

    def step(self, epoch: int, step: int, num_steps: int) -> StepPlan:
        if self.objective == "final":
            return StepPlan(exits=(self.n - 1,), trainable=self.final_only)
        return StepPlan(exits=tuple(range(self.n)))

    def end_epoch(self, epoch: int, dev_score: float) -> None:
        improved = dev_score == dev_score and (self.best is None or dev_score > self.best)
        if improved:
            self.best = float(dev_score)
        else:
            self.objective = "all" if self.objective == "final" else "final"

    def state_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("objective") not in self.OBJECTIVES:
            raise ConfigError(
                f"smart_alt checkpoint has an unknown objective {state.get('objective')!r}"
            )
        self.objective = state["objective"]
        self.best = state.get("best")


class SequentialLayerFocus(Strategy):
    """BERTer's Sequential Layer Focus, followed by any strategy as the global refinement.

    BERTer paper, section 3.3, stage 1: "Fine-tune each layer individually, updating only the
    layer-specific classifier and the backbone model parameters corresponding to that layer",
    so that "each layer is first trained to optimal performance in isolation"; stage 2
    jointly refines the whole network.

    Here stage 1 is one leading epoch (phase ``slf``, ``cfg.slf_fraction`` of the batches)
    split into n equal slices; slice i trains only encoder layer i and exit head i (plus the
    exit method's module, see the module docstring) on L_i. The embeddings are not "parameters
    corresponding to" a layer, so they stay frozen unless ``cfg.slf_embeddings`` adds them to
    slice 1 (what SLF did before that field existed).

    Each slice gets its own learning-rate schedule: a linear warmup over ``cfg.warmup_ratio``
    of the slice, then a linear decay to 0 at its end, the shape every other phase uses over
    its whole length. A slice is a small fine-tuning run of its own: its weights start with
    no optimiser state under a freshly initialised head, whose first gradients are the
    largest and least informative, which a warmup keeps off the pretrained layer; and it
    should end settled (the paper's "optimal performance in isolation"), which a decay gives
    and a constant rate does not. One schedule over the whole epoch (the earlier behaviour)
    spent most of slice 1 warming up and trained the last layer's slice at about a tenth of
    the peak rate.

    Then the wrapped strategy runs (stage 2) with its epochs shifted by one, with a fresh
    optimizer and schedule since its phases are named differently.
    """

    def __init__(self, inner: Strategy, cfg: Config, model: nn.Module):
        super().__init__(cfg, model)
        self.inner = inner
        self.name = f"slf+{inner.name}"
        module = exit_module_parameters(model)
        embeddings = model.embedding_parameters() if cfg.slf_embeddings else []
        self.layers = [
            parameter_names(
                model,
                model.layer_parameters(i)
                + model.head_parameters(i)
                + module
                + (embeddings if i == 0 else []),
            )
            for i in range(self.n)
        ]

    @property
    def num_epochs(self) -> int:
        return 1 + self.inner.num_epochs

    def epoch_phase(self, epoch: int) -> str:
        return "slf" if epoch == 0 else self.inner.epoch_phase(epoch - 1)

    def epoch_fraction(self, epoch: int) -> float:
        return float(self.cfg.slf_fraction) if epoch == 0 else self.inner.epoch_fraction(epoch - 1)

    def layer_at(self, step: int, num_steps: int) -> int:
        """Layer trained at this step of the SLF epoch: n equal slices, in order."""
        return min(self.n - 1, step * self.n // max(num_steps, 1))

    def lr_segments(self, phase: str, total_steps: int) -> list[int]:
        """SLF's phase is its one epoch, so its steps are that epoch's batches: one run per
        layer's slice (empty for a layer with no step, in an epoch shorter than n)."""
        if phase != "slf":
            return self.inner.lr_segments(phase, total_steps)
        layers = [self.layer_at(k, total_steps) for k in range(total_steps)]
        return [layers.count(i) for i in range(self.n)]

    def step(self, epoch: int, step: int, num_steps: int) -> StepPlan:
        if epoch > 0:
            return self.inner.step(epoch - 1, step, num_steps)
        i = self.layer_at(step, num_steps)
        # the last exit has not been trained yet: nothing for layer i to distil from
        return StepPlan(exits=(i,), trainable=self.layers[i], teacher=False)

    def end_epoch(self, epoch: int, dev_score: float) -> None:
        if epoch > 0:
            self.inner.end_epoch(epoch - 1, dev_score)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))


def build_strategy(cfg: Config, model: nn.Module) -> Strategy:
    """The configured strategy for this model, wrapped in SLF when ``cfg.slf == "on"``."""
    strategy = STRATEGIES.get_class(cfg.strategy)(cfg, model)
    if cfg.slf == "on":
        strategy = SequentialLayerFocus(strategy, cfg, model)
    return strategy
