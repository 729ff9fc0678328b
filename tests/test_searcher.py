"""The sweep's searcher and scheduler (berter.sweep.searcher), driven through Tune's Searcher API."""

import optuna
import pytest
from ray.tune.search import Searcher

from berter.sweep.searcher import asha, make_searcher, reduction_factor
from berter.sweep.space import SearchParam, SearchSpace, finite_points, space_size

BATCH = SearchParam("batch", "batch_size", "choice", choices=(16, 32))
LR = SearchParam("lr", "lr", "loguniform", 1e-5, 1e-3)
EPOCHS = SearchParam("epochs", "epochs", "int", 1, 2)


def searcher(params, variants=("v1",), algorithm="optuna", seed=0):
    return make_searcher(
        list(params), list(variants), algorithm=algorithm, metric="dev_score", mode="max",
        seed=seed, num_samples=8,
    )  # fmt: skip


def finish(s, trial_id: str, score: float, epoch: int = 2, planned: int = 2) -> None:
    for e in range(1, epoch + 1):
        s.on_trial_result(trial_id, {"dev_score": score, "training_iteration": e})
    s.on_trial_complete(trial_id, {"dev_score": score, "epoch": epoch, "epochs_planned": planned})


def test_finite_points_enumerate_variants_choices_and_integers():
    space = SearchSpace([BATCH, EPOCHS], ["v1", "v2"])
    points = finite_points(space)
    assert len(points) == space_size(space) == 2 * 2 * 2
    assert {"variant": "v2", "batch_size": 32, "epochs": 1} in points
    assert finite_points(SearchSpace([BATCH, LR], ["v1"])) is None
    assert space_size(SearchSpace([LR], ["v1"])) == float("inf")


@pytest.mark.parametrize("algorithm", ["optuna", "random"])
def test_a_finite_space_is_run_once_per_configuration_then_the_search_ends(algorithm):
    s = searcher([BATCH, EPOCHS], variants=("v1", "v2"), algorithm=algorithm)
    seen = []
    for i in range(8):
        config = s.suggest(str(i))
        assert isinstance(config, dict)
        seen.append(tuple(sorted(config.items())))
        finish(s, str(i), score=0.5)  # equal scores: TPE has no reason to move on
    assert len(set(seen)) == 8
    assert s.suggest("8") == Searcher.FINISHED


def test_redrawn_proposals_are_failed_trials_that_tpe_ignores():
    s = searcher([BATCH])
    for i in range(2):
        s.suggest(str(i))
        finish(s, str(i), score=0.1 * i)
    states = [t.state for t in s._ot_study.trials]
    completed = [st for st in states if st == optuna.trial.TrialState.COMPLETE]
    assert len(completed) == 2
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL}


def test_a_trial_stopped_early_is_pruned_and_a_full_one_complete():
    s = searcher([LR])
    s.suggest("a")
    finish(s, "a", score=0.4, epoch=1, planned=3)  # ASHA stopped it after epoch 1
    s.suggest("b")
    finish(s, "b", score=0.6, epoch=3, planned=3)
    a, b = s._ot_study.trials
    assert a.state == optuna.trial.TrialState.PRUNED and a.intermediate_values == {1: 0.4}
    assert b.state == optuna.trial.TrialState.COMPLETE and b.value == 0.6


def test_a_diverged_or_errored_trial_is_failed_not_pruned_nor_complete():
    s = searcher([LR])
    s.suggest("a")
    s.on_trial_complete("a", {"dev_score": 0.9, "epoch": 1, "epochs_planned": 3, "diverged": True})
    s.suggest("b")
    s.on_trial_complete("b", None, error=True)
    s.suggest("c")
    s.on_trial_complete("c", {"dev_score": 0.8, "epoch": 3, "epochs_planned": 3}, error=True)
    s.suggest("d")
    finish(s, "d", score=0.3, epoch=3, planned=3)
    a, b, c, d = s._ot_study.trials
    assert a.state == b.state == c.state == optuna.trial.TrialState.FAIL
    assert s._ot_study.best_trial.number == d.number


def test_searcher_state_survives_save_and_restore(tmp_path):
    s = searcher([BATCH])
    s.suggest("0")
    finish(s, "0", 0.3)
    s.save(str(tmp_path / "searcher.pkl"))
    restored = searcher([BATCH])
    restored.restore(str(tmp_path / "searcher.pkl"))
    other = restored.suggest("1")
    first = s._ot_study.trials[0].params["batch_size"]
    assert other["batch_size"] != first
    restored.on_trial_complete("1", {"dev_score": 0.2, "epoch": 2, "epochs_planned": 2})
    assert restored.suggest("2") == Searcher.FINISHED


def test_asha_is_gentler_on_short_runs_unless_told_otherwise():
    assert reduction_factor(2) == reduction_factor(4) == 2
    assert reduction_factor(5) == reduction_factor(20) == 3
    assert reduction_factor(3, requested=4) == 4

    def rungs(scheduler):
        return sorted(r[0] for r in scheduler._brackets[0]._rungs)

    short = asha(max_t=3)
    assert short._reduction_factor == 2 and short._time_attr == "main_epoch"
    assert rungs(short) == [1, 2]  # top half after epoch 1, then after epoch 2
    assert rungs(asha(max_t=8)) == [1, 3]
    assert rungs(asha(max_t=3, grace_period=5)) == [3]  # clamped to max_t: never stops early


def test_a_sweep_asking_for_more_trials_than_its_space_has_runs_each_configuration_once(tmp_path):
    from berter.sweep.cli import build_parser
    from berter.sweep.plan import make_plan

    one = "smart=off,cos=off,slf=off,strategy=joint,exit=none,concat=after"
    argv = ["--data", "demo", "--results", str(tmp_path), "--variants", one, "--search", "batch",
            "--range", "batch=16|32", "--num-samples", "5", "--reduction-factor", "3"]  # fmt: skip
    plan, _ = make_plan(build_parser().parse_args(argv))
    assert plan.num_samples == 2 and plan.reduction_factor == 3 and plan.grace_period == 1
    assert any("2 configurations: 2 trials, not 5" in n for n in plan.notes)
