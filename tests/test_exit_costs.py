"""The engine's cost model and the speed-aware operating point (berter.exits.cost); no timing
is asserted: cost models are given, except where only their shape is checked."""

import math

import numpy as np
import pytest
import torch
from exit_costs import TYPICAL, UNPROFITABLE
from test_exits import fake_run, method, task_eval
from test_infer import make_run

from berter.exits.base import ExitContext
from berter.exits.calibration import (
    calibrate,
    choose_fastest,
    choose_per_layer,
    expected_speedup,
    operating_point,
)
from berter.exits.cost import (
    LAYERS_ONLY,
    ZERO,
    Cost,
    CostModel,
    expected_seconds,
    expected_speedups,
    full_seconds,
)
from berter.exits.engine import exit_batch, measure_speedup, prepare, run_exits
from berter.tasks import TASKS
from berter.train.run import Evaluation

SST = TASKS["sst"]
METHODS = ["confidence", "entropy", "lte", "patience", "qexit", "berter"]

# layer 1, check 0.5 at batch 1 (a check at half a layer's cost: exits must save a lot)
COSTLY = CostModel(
    embed=Cost(0.1, 0.1), layer=Cost(0.2, 0.8), check=Cost(0.45, 0.05), head=Cost(0.1, 0.05),
    drop=Cost(0.1, 0.0),
)  # fmt: skip


# ----------------------------------------------------------------------------- the model
def test_batch_one_time_is_each_examples_layers_and_checks():
    cost = CostModel(Cost(0.0, 1.0), Cost(0.0, 10.0), Cost(0.0, 2.0), Cost(0.0, 3.0), ZERO, (1,))
    # example 0 exits at layer 1 after one check; example 1 runs 3 layers, 2 checks, the head
    got = expected_seconds(cost, np.array([0, 2]), [True, True], 1)
    assert got == pytest.approx(1.0 + ((10 + 2) + (30 + 4 + 3)) / 2)
    # no check at layer 2: example 1 pays one check only
    got = expected_seconds(cost, np.array([0, 2]), [True, False], 1)
    assert got == pytest.approx(1.0 + ((10 + 2) + (30 + 2 + 3)) / 2)
    assert full_seconds(cost, 3, 1) == pytest.approx(1.0 + 30 + 3)


def test_in_a_batch_a_step_pays_its_fixed_cost_while_any_row_is_left():
    cost = CostModel(ZERO, Cost(4.0, 1.0), ZERO, ZERO, Cost(2.0, 0.0), (2,))
    # half the examples exit at layer 1: a batch of 2 runs layer 2 unless both exited (1/4),
    # on one row on average; it drops a row when exactly one of them exits (1/2)
    got = expected_seconds(cost, np.array([0, 1]), [True], 2)
    per_batch = (4 + 2 * 1) + (4 * 0.75 + 2 * 0.5) + 2.0 * 0.5
    assert got == pytest.approx(per_batch / 2)


def test_no_early_exit_is_expected_exactly_as_fast_as_the_full_model():
    at_last = np.full(10, 2)
    assert expected_speedups(TYPICAL, at_last, [False, False]) == pytest.approx((1.0, 1.0))
    assert expected_speedups(LAYERS_ONLY, np.array([0, 2]), [True, True]) == (1.5,)


# ----------------------------------------------------------------------------- the choice
def early_few_late_many():
    """Four layers: 5 of 100 SST examples are sure (and right) at layer 1, the others only at
    layer 3. One threshold on every layer saves the most layers (2.9), but its checks at
    layers 1 and 2 cost every example while letting 5 out: checking at layer 3 alone is
    faster."""
    sure, unsure = [0.02, 0.95, 0.01, 0.01, 0.01], [0.4, 0.2, 0.2, 0.1, 0.1]  # unsure: wrong
    first = [sure] * 5 + [unsure] * 95
    return task_eval(SST, [1] * 100, [first, [sure] * 5 + [unsure] * 95, [sure] * 100, [sure] * 100])


def test_one_threshold_is_chosen_by_expected_speed_not_layers_saved():
    m, ctx, te = method("confidence"), ExitContext(SST, 4), early_few_late_many()
    grid = m.grid(SST, 4)
    fewest = choose_fastest(m, ctx, te, grid, 0.01, LAYERS_ONLY)
    fastest = choose_fastest(m, ctx, te, grid, 0.01, TYPICAL)
    assert isinstance(fewest, float)  # one threshold checked on every layer
    assert fastest[:2] == (None, None) and fastest[2] is not None
    layers = [float(m.exit_layers(m.layer_signals(ctx, te.logits, te.pooled), p).mean() + 1)
              for p in (fewest, fastest)]  # fmt: skip
    assert layers == pytest.approx([2.9, 3.0])
    slow, fast = (expected_speedup(m, ctx, te, p, TYPICAL)[0] for p in (fewest, fastest))
    assert fast > slow > 1.0


def test_a_range_of_checks_must_keep_the_tolerance_in_most_resamples_too():
    # 100 examples right at the last layer; layer 1 is fairly sure and wrong on all of them;
    # layer 2 is sure of 50, one of them wrong: letting those out costs 1%, inside a 1.1%
    # tolerance on the slice but not in about a quarter of its bootstrap resamples
    right, wrong, fairly_wrong = [0.05, 0.95, 0, 0, 0], [0.95, 0.05, 0, 0, 0], [0.6, 0.4, 0, 0, 0]
    unsure = [0.3, 0.7, 0, 0, 0]
    second = [right] * 49 + [wrong] + [unsure] * 50
    te = task_eval(SST, [1] * 100, [[fairly_wrong] * 100, second, [right] * 100])
    m, ctx = method("confidence"), ExitContext(SST, 3)
    grid = m.grid(SST, 3)
    unguarded = choose_fastest(m, ctx, te, grid, 0.011, TYPICAL, confidence=0.0)
    assert unguarded[0] is None and unguarded[1] is not None  # a check at layer 2 only
    guarded = choose_fastest(m, ctx, te, grid, 0.011, TYPICAL, confidence=0.9)
    assert isinstance(guarded, float) and guarded > 0.6  # one threshold on every layer


def test_per_layer_choice_drops_checks_that_do_not_pay():
    m, ctx, te = method("confidence"), ExitContext(SST, 4), early_few_late_many()
    chosen = choose_per_layer(m, ctx, te, m.grid(SST, 4), 0.01, 0.9, TYPICAL)
    assert chosen[:2] == (None, None) and chosen[2] is not None
    fewest = choose_per_layer(m, ctx, te, m.grid(SST, 4), 0.01, 0.9, LAYERS_ONLY)
    assert fewest[0] is not None  # layers alone take the five early exits


def test_no_setting_is_chosen_when_exit_checks_cost_more_than_they_save():
    m, ctx, te = method("confidence"), ExitContext(SST, 4), early_few_late_many()
    grid = m.grid(SST, 4)
    assert choose_fastest(m, ctx, te, grid, 0.5, UNPROFITABLE) is None
    assert choose_per_layer(m, ctx, te, grid, 0.5, 0.0, UNPROFITABLE) is None
    cfg = method("confidence").cfg.replace(tasks=("sst",))
    sure = [[0.95, 0.05, 0, 0, 0]] * 2
    calib = task_eval(SST, [0, 0], [sure, sure, sure])
    for per_layer in (False, True):
        run = fake_run(cfg.replace(exit_per_layer=per_layer),
                       lambda split: Evaluation({"sst": calib}, 3), UNPROFITABLE)  # fmt: skip
        row = operating_point(run, Evaluation({"sst": calib}, 3))
        assert row["sst_exit_layer"] == 3.0 and math.isnan(row["sst_threshold"])
        assert row["sst_layer_thresholds"] is None  # "no early exit"


@pytest.mark.parametrize("per_layer", [False, True], ids=["shared", "per-layer"])
def test_every_method_chooses_a_setting_expected_no_slower_than_the_full_model(per_layer):
    slower_by_layers = []
    exits = []
    for name in METHODS:
        run = make_run(exit_method=name, exit_per_layer=per_layer, exit_tolerance=0.5)
        calib = run.evaluate("calib")
        chosen = calibrate(run, calib, {t.name: COSTLY for t in run.tasks})
        fewest = calibrate(run, calib, {t.name: LAYERS_ONLY for t in run.tasks})
        for task in run.tasks:
            ctx, te = ExitContext.from_model(run.model, task), calib.tasks[task.name]
            speeds = expected_speedup(run.method, ctx, te, chosen[task.name], COSTLY)
            assert min(speeds) >= 1.0, (name, task.name, chosen[task.name], speeds)
            exits.append(chosen[task.name] is not None)
            before = expected_speedup(run.method, ctx, te, fewest[task.name], COSTLY)
            slower_by_layers.append(min(before) < 1.0)
    assert any(exits)  # some method does exit early, so the check above is not vacuous
    assert any(slower_by_layers)  # and the fewest-layers choice would have been slower


# ----------------------------------------------------------------------------- the engine
@pytest.mark.parametrize("name", ["patience", "qexit"])
def test_stateful_methods_run_no_exit_head_after_the_last_layer_that_can_fire(name):
    run = make_run(exit_method=name)
    task = run.tasks[0]
    te = run.evaluate("dev").tasks[task.name]
    ctx = ExitContext.from_model(run.model, task)
    param = (1.01 if name == "qexit" else 1.0, None)  # only layer 1 could exit; none does
    simulated = run.method.exit_layers(run.method.layer_signals(ctx, te.logits, te.pooled), param)
    heads = []
    original = run.model.exit
    run.model.exit = lambda i, *a: heads.append(i) or original(i, *a)
    got = run_exits(run.model, run.method, prepare(run.encoded[task.name]["dev"], 1, "cpu"),
                    task, param)  # fmt: skip
    assert got.exit_layers.tolist() == (simulated + 1).tolist()
    assert 1 not in heads and heads.count(0) == len(simulated)


HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


def host_reads(work, monkeypatch) -> int:
    """How many times ``work()`` reads a tensor's value on the host (on a GPU, each waits)."""
    count = 0

    def counted(real):
        def read(self, *args, **kwargs):
            nonlocal count
            count += 1
            return real(self, *args, **kwargs)

        return read

    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
        work()
    return count


@pytest.mark.parametrize(
    "name,param,decisions",
    [
        ("confidence", 1.01, 2),  # never fires: a decision at layers 1 and 2
        ("confidence", (None, 1.01), 1),
        ("lte", (1.01, None), 1),
        ("patience", (None, 2.0), 1),  # layer 1's signal is needed, its decision is not
        ("qexit", (1.01, None), 1),  # nothing after layer 1 can fire: no halting there
    ],
)
def test_at_batch_one_an_exit_check_reads_only_its_decision_on_the_host(
    name, param, decisions, monkeypatch
):
    run = make_run(exit_method=name)
    task = run.tasks[0]
    ctx = ExitContext.from_model(run.model, task)
    batch = prepare(run.encoded[task.name]["dev"], 1, "cpu")[0]

    def work():
        with torch.inference_mode():
            exit_batch(run.model, run.method, ctx, batch, param)

    assert host_reads(work, monkeypatch) == decisions


def test_no_early_exit_is_timed_once_and_reported_as_exactly_one():
    run = make_run(exit_method="confidence")
    enc = run.encoded["sst"]["dev"]
    for param in (None, (None, None)):
        res = measure_speedup(run.model, run.method, enc, param, 4, max_examples=6, repeats=1)
        assert res["speedup"] == 1.0 and res["seconds_exit"] == res["seconds_full"]
        assert res["avg_exit_layer"] == run.model.num_layers


# ----------------------------------------------------------------------------- the run's costs
def test_a_given_cost_model_serves_every_task_and_is_never_timed():
    run = make_run(exit_method="confidence")
    assert run.exit_costs() == {t.name: TYPICAL for t in run.tasks}


def test_a_run_times_its_costs_once_per_exit_method_for_the_tasks_that_can_exit():
    from test_infer import varied_backbone
    from tiny import tiny_config

    from berter.train.run import TrainingRun

    run = TrainingRun(tiny_config(strategy="joint", exit_method="confidence"),
                      backbone=varied_backbone())  # fmt: skip
    costs = run.exit_costs()
    assert set(costs) == {"sst", "para"}  # confidence has no signal for STS
    for cost in costs.values():
        assert cost.batch_sizes == (1, 32)
        parts = (cost.embed, cost.layer, cost.check, cost.head, cost.drop)
        assert all(p.fixed >= 0 and p.per_row >= 0 for p in parts)
    assert run.exit_costs() is costs  # timed once
