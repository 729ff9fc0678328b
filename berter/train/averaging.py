"""Exponential moving average of the weights, evaluated in place of the raw weights.

Fine-tuning with a linear decay ends on the last few hundred steps' weights; an average over
the recent steps is a flatter point and often scores higher on dev. The average is kept by
``torch.optim.swa_utils.AveragedModel`` (an EMA update after every optimiser step); between
epochs it is swapped into the model, so evaluation, exit calibration, checkpoints and
exported models all see the averaged weights, and the raw ones are swapped back before the
next epoch trains. :class:`WeightAveraging` does this around the training loop as a
callback (``cfg.ema_decay`` > 0 adds it to every run).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from berter.train.callbacks import EpochReport, Run, TrainerCallback


class WeightAverage:
    """The EMA of a model's parameters (decay per optimiser step) and which copy is where."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = model
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.swapped = False  # True while the model holds the average (between epochs)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current (raw) weights into the average; once per optimiser step."""
        if self.swapped:
            raise RuntimeError("update() with the average swapped in: call use_raw() first")
        self.averaged.update_parameters(self.model)

    @torch.no_grad()
    def _swap(self) -> None:
        # the Parameter objects stay the same (the optimiser's state is keyed by them); only
        # the tensors they hold change places
        for p, q in zip(self.model.parameters(), self.averaged.module.parameters(), strict=True):
            p.data, q.data = q.data, p.data
        self.swapped = not self.swapped

    def use_average(self) -> None:
        """Put the averaged weights in the model (to evaluate or save it)."""
        if not self.swapped and int(self.averaged.n_averaged) > 0:
            self._swap()

    def use_raw(self) -> None:
        """Put the raw weights back in the model (to train on)."""
        if self.swapped:
            self._swap()

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict(), "swapped": self.swapped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load after the model's own weights, so that the two copies pair up as they were."""
        self.averaged.load_state_dict(state["averaged"])
        self.swapped = bool(state["swapped"])


class WeightAveraging(TrainerCallback):
    """The EMA as a training callback: raw weights while an epoch trains, the average after.

    Its state (the average, and which copy the model holds) is the checkpoint's ``average``
    entry; a checkpoint saved without it (a trial's last epoch) resumes with a fresh average
    that starts from the loaded weights at its first update.
    """

    state_key = "average"

    def __init__(self, model: nn.Module, decay: float):
        self.average = WeightAverage(model, decay)

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        self.average.use_raw()

    def on_step_end(self, run: Run, step: int, loss: torch.Tensor) -> None:
        self.average.update()

    def on_epoch_end(self, run: Run, report: EpochReport) -> None:
        self.average.use_average()  # evaluated, checkpointed and exported from here on

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)
