"""Optional behaviour around the training loop, as callbacks (transformers' ``TrainerCallback`` shape).

The loop in berter.train.run calls every hook of every callback in order, and has no
branch of its own for an optional feature: weight averaging (berter.train.averaging),
the epoch log line (:class:`EpochLog`) and a user's own callbacks are all the same kind of
object. A hook receives the :class:`~berter.train.run.TrainingRun` first, and may read
anything on it (``run.cfg``, ``run.model``, ``run.epoch``, ``run.trial_id``) and set
``run.should_stop`` (early stopping: the run ends after the current epoch).

A user's callback is a subclass named by a dotted path, ``package.module:ClassName``
(``--callback`` of the sweep and of ``python -m berter.train``); it is built with no
arguments in the process that trains, so its module must be importable there (for a sweep:
on every Ray worker), and its constructor should be cheap: the sweep builds each one once in
the driver as a check before any trial starts.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from berter.errors import ConfigError, first_line

if TYPE_CHECKING:  # for the hooks' signatures only (no torch import at module level)
    import torch

    from berter.config import Config
    from berter.model.multi_exit import MultiExitBert
    from berter.strategies import Strategy
    from berter.train.evaluate import Evaluation


@dataclass
class EpochReport:
    """One trained epoch: its loss and times, and (once evaluated) its metric row."""

    epoch: int  # 1-based
    phase: str
    train_loss: float
    epoch_seconds: float
    train_seconds: float  # cumulative
    examples: int
    metrics: dict[str, Any] = field(default_factory=dict)


class Run(Protocol):
    """What a callback may read of the ``berter.train.run.TrainingRun`` it is called with
    (and ``should_stop``, which it may set)."""

    cfg: Config
    model: MultiExitBert
    strategy: Strategy
    epoch: int  # epochs completed
    history: list[EpochReport]
    trial_id: str | None  # the sweep trial this run is; None outside a sweep
    should_stop: bool  # set by a callback: the run ends after the current epoch


class TrainerCallback:
    """No-op hooks; override the ones you need.

    ``state_key``: a callback with state that a resumed run must get back (weight
    averaging's average) names its entry in the run's checkpoint; ``state_dict`` and
    ``load_state_dict`` then save and restore it (loaded after the model's weights).
    """

    state_key: str | None = None

    def on_train_begin(self, run: Run) -> None:
        """Before the first epoch this process trains (``run.epoch`` > 0 after a resume)."""

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        """Before the first step of ``epoch`` (0-based); the optimiser is built by now."""

    def on_step_end(self, run: Run, step: int, loss: torch.Tensor) -> None:
        """After each optimiser step. ``loss`` stays on the device: reading its value (``.item()``,
        ``float()``) makes the host wait for the GPU at every step."""

    def on_epoch_end(self, run: Run, report: EpochReport) -> None:
        """After the epoch's last step, before it is evaluated (``report.metrics`` is empty)."""

    def on_evaluate(self, run: Run, report: EpochReport, dev: Evaluation) -> None:
        """After the epoch's dev evaluation: ``report.metrics`` holds the metric row
        (``dev_score``, per-task metrics, the exit operating point, ``diverged``)."""

    def on_train_end(self, run: Run) -> None:
        """After the last epoch, or the epoch whose loss diverged, or the one after which a
        callback set ``run.should_stop``. A trial the sweep's scheduler stops from outside
        gets no call."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EpochLog(TrainerCallback):
    """One line per epoch: loss, dev score and time (the command line prints it to stderr)."""

    def __init__(self, write: Callable[[str], None] | None = None):
        self.write = write or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def on_evaluate(self, run: Run, report: EpochReport, dev: Evaluation) -> None:
        self.write(
            f"epoch {report.epoch}/{run.strategy.num_epochs} [{report.phase}] "
            f"loss {report.train_loss:.4f} dev {report.metrics['dev_score']:.4f} "
            f"({report.epoch_seconds:.1f}s)"
        )


def load_callback(path: str) -> type[TrainerCallback]:
    """The TrainerCallback subclass at ``package.module:ClassName`` (or ``package.module.ClassName``);
    anything wrong is a one-line ConfigError."""
    module_name, sep, name = path.partition(":")
    if not sep:
        module_name, _, name = path.rpartition(".")
    if not module_name or not name.isidentifier():
        raise ConfigError(f"--callback {path!r}: give package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises on import
        raise ConfigError(f"--callback {path}: cannot import {module_name}: {first_line(exc)}") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise ConfigError(f"--callback {path}: {module_name} has no {name}")
    if not (isinstance(cls, type) and issubclass(cls, TrainerCallback)):
        raise ConfigError(
            f"--callback {path}: not a subclass of berter.train.callbacks.TrainerCallback"
        )
    return cls


def build_callbacks(paths: Iterable[str]) -> list[TrainerCallback]:
    """One instance of each callback class named by ``paths``, built with no arguments."""
    built = []
    for path in paths:
        cls = load_callback(path)
        try:
            built.append(cls())
        except Exception as exc:
            raise ConfigError(f"--callback {path}: {first_line(exc)}") from None
    return built
