"""The sweep's search algorithm: Optuna (TPE or random) behind Ray Tune, plus ASHA.

Three things on top of Ray's ``OptunaSearch`` and ``ASHAScheduler``, each because the
plain setup wasted trials on the small, mostly categorical spaces sweeps use (see
BENCHMARKS.md, search efficiency):

- **No repeated configurations.** Training is seeded, so a configuration run twice reports
  the same scores twice; TPE happily proposes it again. :class:`NoRepeatOptunaSearch` tells
  Optuna such a proposal failed (TPE ignores failed trials) and asks again; after
  ``MAX_REDRAWS`` tries it takes a random configuration not yet run. When a finite space
  has been run completely the search ends (``Searcher.FINISHED``) instead of repeating.
- **Stopped is not finished.** A trial ASHA stopped early is told to Optuna as *pruned*
  (its reported epochs stay as intermediate values) rather than as complete with its
  first-rung score, which TPE would rank against full-length trials.
- **Failed is failed.** A diverged trial (non-finite training loss, ``diverged`` in its last
  result) and an errored one are told to Optuna as *failed*: Ray's ``OptunaSearch`` would
  tell a diverged trial *complete* with its last score, which can become the study's best
  and pull TPE toward the settings that diverge (TPE ignores failed trials).
- **A gentler ASHA on short runs.** With few epochs, ASHA has one or two rungs and Ray's
  default reduction factor (4) keeps only the top quarter after the first epoch, when the
  ranking is still noisy. :func:`reduction_factor` picks 2 for runs of up to
  ``SHORT_RUN_EPOCHS`` epochs and 3 beyond, unless the user sets one.
"""

from __future__ import annotations

import random
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from berter.sweep.space import SearchParam, SearchSpace, config_key, finite_points

MAX_REDRAWS = 20  # TPE proposals tried before a random unseen configuration is taken
SHORT_RUN_EPOCHS = 4


def reduction_factor(max_t: int, requested: float | None = None) -> float:
    """ASHA's reduction factor: the user's, else 2 for short runs and 3 for longer ones."""
    if requested:
        return float(requested)
    return 2.0 if max_t <= SHORT_RUN_EPOCHS else 3.0


def asha(max_t: int, grace_period: int = 1, factor: float | None = None) -> ASHAScheduler:
    """ASHA on main epochs (an SLF warm-up epoch is not ranked against full epochs)."""
    max_t = max(max_t, 1)
    return ASHAScheduler(
        time_attr="main_epoch",
        max_t=max_t,
        grace_period=min(max(grace_period, 1), max_t),
        reduction_factor=reduction_factor(max_t, factor),
    )


class NoRepeatOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that never proposes a configuration twice and tells Optuna which
    trials were stopped early and which failed (module doc). ``epochs_key`` / ``planned_key``: the result
    fields that say how far a trial got and how far it was meant to go."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        epochs_key: str = "epoch",
        planned_key: str = "epochs_planned",
        **kwargs: Any,
    ):
        super().__init__(space=space, **kwargs)
        self._points = finite_points(space)
        self._seen: set[tuple] = set()
        self._rng = random.Random(seed)
        self._epochs_key = epochs_key
        self._planned_key = planned_key
        self.exhausted = False

    def _ask(self, trial_id: str) -> dict[str, Any]:
        ot_trial = self._ot_study.ask()
        self._ot_trials[trial_id] = ot_trial
        return self._suggest_from_define_by_run_func(self._space, ot_trial)

    def suggest(self, trial_id: str) -> dict | str | None:
        if trial_id in self._ot_trials or not callable(self._space):
            return super().suggest(trial_id)
        if self._points is not None and len(self._seen) >= len(self._points):
            if not self.exhausted:
                print(f"search: all {len(self._points)} configurations of the space have run")
            self.exhausted = True
            return Searcher.FINISHED
        for _ in range(MAX_REDRAWS):
            params = self._ask(trial_id)
            if config_key(params) not in self._seen:
                break
            repeat = self._ot_trials.pop(trial_id)
            repeat.set_user_attr("berter", "repeat proposal, not run")  # so the stored study says why
            self._ot_study.tell(repeat, state=optuna.trial.TrialState.FAIL)
        else:
            if self._points is None:  # a continuous space: a repeat is all but impossible
                raise RuntimeError("the sampler keeps proposing configurations already run")
            unseen = [p for p in self._points if config_key(p) not in self._seen]
            self._ot_study.enqueue_trial(self._rng.choice(unseen))
            params = self._ask(trial_id)
        self._seen.add(config_key(params))
        return params

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if (
            (error or (result and result.get("diverged")))
            and trial_id in self._ot_trials
            and trial_id not in self._completed_trials
        ):
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return
        if (
            result
            and not error
            and not isinstance(self.metric, list)
            and trial_id in self._ot_trials
            and trial_id not in self._completed_trials
            and self._stopped_early(result)
        ):
            ot_trial = self._ot_trials[trial_id]
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def _stopped_early(self, result: dict) -> bool:
        done, planned = result.get(self._epochs_key), result.get(self._planned_key)
        if done is None or planned is None or result.get("diverged"):
            return False
        return int(done) < int(planned)


def make_searcher(
    params: list[SearchParam],
    variants: list[str],
    *,
    algorithm: str,
    metric: str | list[str],
    mode: str | list[str],
    seed: int,
    num_samples: int,
    points_to_evaluate: list[dict[str, Any]] | None = None,
    storage: optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
) -> NoRepeatOptunaSearch:
    """The searcher a sweep runs: TPE (``optuna``) or Optuna's random sampler, writing its
    study to ``storage`` under ``study_name`` (berter.sweep.study) when given."""
    if algorithm == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        startup = min(10, max(2, num_samples // 3))
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    return NoRepeatOptunaSearch(
        SearchSpace(params, variants),
        seed=seed,
        metric=metric,
        mode=mode,
        sampler=sampler,
        points_to_evaluate=points_to_evaluate,
        storage=storage,
        study_name=study_name,
    )
