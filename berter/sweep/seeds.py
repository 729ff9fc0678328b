"""Seeds of one configuration: one Tune trial trains its N seeds in turn and reports their mean.

With ``--seeds N`` every configuration the searcher proposes is trained N times, with seeds
``cfg.seed``, ``cfg.seed + 1``, ... One Tune trial holds the N ``TrainingRun``s of a
configuration (a :class:`SeedGroup`) and each ``step()`` trains one epoch of each in turn, so

- ASHA compares like with like: every result it ranks is the mean over the same N seeds
  after the same number of epochs, never one lucky seed against another's average;
- Optuna gets one value per configuration, the mean over its seeds of the objective (it
  never sees the same configuration twice: berter.sweep.searcher);
- a checkpoint holds all N runs, each a complete inference checkpoint in ``seed<k>/``, and a
  restored trial continues every seed from it.

What the trial reports is :func:`combine` of its seeds' results: a value every seed reports
alike (epoch, variant, ...) as it is, numbers averaged, flags OR-ed (one diverged seed makes
the configuration diverged: a setting that diverges on some seeds is unstable, and the
searcher is told so), and every seed's own result, in seed order, under ``"seeds"``; the
results writer turns those into one row per run (``trial_id`` = :func:`run_id`).

The seeds vary the training (head initialisation, batch order, dropout, SMART's noise), not
the data: the driver draws the ``--max-train`` / ``--max-dev`` subsets and the calibration
slice once, with the sweep's ``--seed``, and every run trains and is evaluated on them, so
that seed k of two variants can be compared pair by pair (berter.report.stats).

With one seed the result is that seed's own, unchanged, and the checkpoint directory is the
run's, so a one-seed sweep writes exactly what it wrote before seeds existed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from berter.config import Config
    from berter.train.run import TrainingRun

SEEDS_KEY = "seeds"  # a seeded result's per-seed results, in seed order
PER_RUN = {"seed"}  # what identifies one run: never combined


def seeds_of(first: int, num_seeds: int) -> list[int]:
    """The training seeds of a configuration: ``first``, ``first + 1``, ..."""
    return [first + k for k in range(num_seeds)]


def run_id(config_id: str, seed: int, num_seeds: int) -> str:
    """A run's ``trial_id`` in the results: the Tune trial's id for one seed, else
    ``<config_id>-seed<seed>``."""
    return config_id if num_seeds == 1 else f"{config_id}-seed{seed}"


def run_directory(checkpoint_dir: str, seed: int, num_seeds: int) -> str:
    """Where a run's checkpoint sits inside its trial's (a local path or a URI): the
    directory itself for one seed, else its ``seed<seed>`` subdirectory."""
    return checkpoint_dir if num_seeds == 1 else f"{checkpoint_dir.rstrip('/')}/seed{seed}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result for the seeds' results of one epoch (module docstring); a single seed's
    result is returned as it is."""
    if len(results) == 1:
        return results[0]
    out: dict[str, Any] = {}
    for key, first in results[0].items():
        if key in PER_RUN:
            continue
        values = [r.get(key) for r in results]
        if all(v == first for v in values):
            out[key] = first
        elif all(isinstance(v, bool) for v in values):
            out[key] = any(values)
        elif all(_number(v) for v in values):
            # the plain mean: a NaN seed (a diverged one) makes it NaN, never a best score
            out[key] = math.fsum(values) / len(values) if all(map(math.isfinite, values)) else math.nan
    out[SEEDS_KEY] = results
    return out


def split(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-seed results of a trial's result: the result itself for one seed."""
    return list(result.get(SEEDS_KEY) or [result])


class SeedGroup:
    """The ``TrainingRun``s of one configuration, one per seed, trained in lockstep."""

    def __init__(
        self,
        cfg: Config,
        data: Any,
        num_seeds: int,
        device: Any = None,
        callbacks: tuple[str, ...] = (),
        trial_id: str | None = None,
    ) -> None:
        """``callbacks``: TrainerCallback paths (``--callback``), built afresh for every run."""
        from berter.train.callbacks import build_callbacks
        from berter.train.run import TrainingRun

        self.runs: list[TrainingRun] = []
        for seed in seeds_of(cfg.seed, num_seeds):
            tokenizer = self.runs[0].tokenizer if self.runs else None
            self.runs.append(
                TrainingRun(
                    cfg.replace(seed=seed),
                    data,
                    tokenizer=tokenizer,
                    device=device,
                    callbacks=build_callbacks(callbacks),
                    trial_id=trial_id,
                )
            )

    @property
    def num_seeds(self) -> int:
        return len(self.runs)

    @property
    def finished(self) -> bool:
        return all(run.finished for run in self.runs)

    @property
    def epoch(self) -> int:
        """Epochs every seed has completed."""
        return min(run.epoch for run in self.runs)

    def step(self, one_epoch: Callable[[TrainingRun], dict[str, Any]]) -> dict[str, Any]:
        """One epoch of every seed in turn (``one_epoch`` trains it and returns its result),
        combined; a diverged seed ends the epoch (the configuration is diverged)."""
        results = []
        for run in self.runs:
            results.append(one_epoch(run))
            if results[-1].get("diverged"):
                break
        return combine(results)

    def directories(self, checkpoint_dir: str | Path) -> list[tuple[TrainingRun, Path]]:
        """Each run with the directory of its checkpoint inside ``checkpoint_dir`` (created)."""
        out = []
        for run in self.runs:
            directory = Path(run_directory(str(checkpoint_dir), run.cfg.seed, self.num_seeds))
            directory.mkdir(parents=True, exist_ok=True)
            out.append((run, directory))
        return out
