"""Which exits count and which weights move, per strategy, checked on real optimizer steps."""

import itertools
import math

import pytest
import torch
from tiny import tiny_backbone, tiny_config
from transformers import get_linear_schedule_with_warmup

from berter.config import CONCAT_VALUES, COS_VALUES, SLF_VALUES, SMART_VALUES
from berter.data.files import load_data
from berter.errors import ConfigError
from berter.exits.rules import EXIT_METHODS
from berter.strategies import STRATEGIES, SequentialLayerFocus, build_strategy
from berter.sweep.preflight import main_epochs
from berter.train.run import TrainingRun
from berter.variants import check

TASKS = ("sst", "para", "sts")


@pytest.fixture(scope="module")
def data():
    return load_data(None, TASKS, max_train=16, max_dev=8, seed=0, calib_fraction=0.0)


def make_run(data, **overrides) -> TrainingRun:
    cfg = tiny_config(**{"warmup_ratio": 0.0, **overrides})
    run = TrainingRun(cfg, data, backbone=tiny_backbone())
    run.build_optimizer(100)
    return run


def snapshot(run: TrainingRun) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in run.model.named_parameters()}


def changed(run: TrainingRun, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in run.model.named_parameters() if not torch.equal(p, before[n])}


def batch_of(run: TrainingRun, task: str, epoch: int = 0):
    return next(b for b in run.epoch_batches(epoch) if b.task == task)


def train_step(run: TrainingRun, epoch: int, step: int, num_steps: int, task: str = "sst"):
    """One real optimizer step as the training loop takes it; returns (plan, changed names)."""
    before = snapshot(run)
    plan = run.strategy.step(epoch, step, num_steps)
    run.apply_trainable(plan)
    loss = run.step_loss(batch_of(run, task, epoch), plan)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    for p in run.model.parameters():
        p.requires_grad_(True)
    return plan, changed(run, before)


def head(task: str, i: int) -> str:
    return f"heads.{task}.{i}."


def touched(names: set[str], prefix: str) -> bool:
    return any(n.startswith(prefix) for n in names)


BACKBONE = "bert."
EMBEDDINGS = "bert.embeddings."


def layer(i: int) -> str:
    return f"bert.encoder.layer.{i}."


# ------------------------------------------------------------------ joint


def test_joint_trains_every_exit_head_and_the_backbone(data):
    run = make_run(data, strategy="joint")
    plan, moved = train_step(run, 0, 0, 10)
    assert plan.exits == (0, 1, 2)
    assert all(touched(moved, head("sst", i)) for i in range(3))
    assert all(touched(moved, layer(i)) for i in range(3)) and touched(moved, EMBEDDINGS)


# ------------------------------------------------------------------ two-stage


def test_two_stage_runs_two_phases_of_cfg_epochs_each(data):
    run = make_run(data, strategy="two_stage", epochs=2)
    s = run.strategy
    assert s.num_epochs == 4
    assert [s.epoch_phase(e) for e in range(4)] == ["stage1", "stage1", "stage2", "stage2"]


def test_two_stage_first_stage_trains_backbone_and_final_heads_only(data):
    run = make_run(data, strategy="two_stage")
    plan, moved = train_step(run, 0, 0, 10)
    assert plan.exits == (2,)
    assert touched(moved, layer(0)) and touched(moved, head("sst", 2))
    assert not touched(moved, head("sst", 0)) and not touched(moved, head("sst", 1))


def test_two_stage_second_stage_leaves_backbone_and_final_heads_bit_identical(data):
    run = make_run(data, strategy="two_stage")
    run.train_epoch()
    stage1_optimizer = run.optimizer
    before = snapshot(run)
    report = run.train_epoch()  # a whole real epoch of stage 2, fresh optimizer
    moved = changed(run, before)
    assert report.phase == "stage2" and run.optimizer is not stage1_optimizer
    assert not touched(moved, BACKBONE)
    assert all(n.startswith("heads.") for n in moved)
    for task in TASKS:
        assert not touched(moved, head(task, 2))
        assert touched(moved, head(task, 0)) and touched(moved, head(task, 1))


def test_two_stage_needs_two_layers():
    cfg = tiny_config(strategy="two_stage", drop_top=2)
    with pytest.raises(ConfigError, match="two_stage needs at least 2"):
        TrainingRun(cfg, backbone=tiny_backbone())
    with pytest.raises(ConfigError, match="two_stage needs at least 2"):
        main_epochs(cfg, 3)  # the sweep driver's check, before any model exists


@pytest.mark.parametrize("name,slf", itertools.product(sorted(STRATEGIES), SLF_VALUES))
def test_epochs_known_from_the_config_match_the_built_strategy(data, name, slf):
    cfg = tiny_config(strategy=name, slf=slf, epochs=3)
    strategy = make_run(data, strategy=name, slf=slf, epochs=3).strategy
    main = sum(1 for e in range(strategy.num_epochs) if strategy.epoch_phase(e) != "slf")
    assert main_epochs(cfg, 3) == main == strategy.num_epochs - (slf == "on")


# ------------------------------------------------------------------ alternating


def test_alternating_even_steps_train_the_final_exit_odd_steps_all_exits(data):
    run = make_run(data, strategy="alternating")
    plan, moved = train_step(run, 0, 0, 10)
    assert plan.exits == (2,)
    assert touched(moved, layer(0)) and touched(moved, head("sst", 2))
    assert not touched(moved, head("sst", 0)) and not touched(moved, head("sst", 1))
    plan, moved = train_step(run, 0, 1, 10)
    assert plan.exits == (0, 1, 2)
    assert all(touched(moved, head("sst", i)) for i in range(3))


def layers_reaching_the_exit_module(run: TrainingRun, plan, task: str) -> set[int]:
    """0-based exits whose pooled vector the exit module reads in this step's loss with
    gradient flowing back to the module (hooks record which head produced each read)."""
    module = run.model.exit_module[task]
    produced_by, reads = {}, []
    hooks = [
        run.model.heads[task][i].register_forward_hook(
            lambda m, args, out, i=i: produced_by.__setitem__(id(out[1]), i)
        )
        for i in range(run.model.num_layers)
    ]
    hooks.append(module.register_forward_hook(lambda m, args, out: reads.append((args[0], out))))
    run.apply_trainable(plan)
    loss = run.step_loss(batch_of(run, task), plan)
    for hook in hooks:
        hook.remove()
    if not reads:
        return set()
    grads = torch.autograd.grad(loss, [out for _, out in reads], allow_unused=True)
    return {
        produced_by[id(x)]
        for (x, _), g in zip(reads, grads, strict=True)
        if g is not None and g.abs().sum() > 0
    }


@pytest.mark.parametrize(
    ("exit_method", "task", "every", "restricted"),
    [
        ("lte", "sst", {0, 1, 2}, {2}),
        ("berter", "sts", {0, 1, 2}, {2}),  # the hybrid's LTE, for regression
        ("qexit", "sst", {0, 1}, set()),  # the last exit takes the remaining mass: no Lambda
    ],
)
@pytest.mark.parametrize("trained_only", [False, True])
def test_on_an_alternating_final_exit_step_the_exit_module_learns_from_every_layer(
    data, exit_method, task, every, restricted, trained_only
):
    restrict = {"exit_module_trained_only": True} if trained_only else {}  # default: every
    run = make_run(data, strategy="alternating", exit_method=exit_method, **restrict)
    plan = run.strategy.step(0, 0, 10)
    assert plan.exits == (2,)
    expected = restricted if trained_only else every
    assert layers_reaching_the_exit_module(run, plan, task) == expected


def test_alternating_step_count_restarts_each_epoch(data):
    s = make_run(data, strategy="alternating").strategy
    assert [s.step(e, k, 5).exits == (2,) for e in (0, 1) for k in range(3)] == [
        True, False, True, True, False, True,
    ]  # fmt: skip


# ------------------------------------------------------------------ smart alternating


def test_smart_alt_starts_with_the_final_exit_and_switches_when_dev_stalls(data):
    run = make_run(data, strategy="smart_alt")
    s = run.strategy
    assert s.step(0, 0, 5).exits == (2,)
    s.end_epoch(0, 0.50)  # improved (first score): keep L_n
    assert s.step(1, 0, 5).exits == (2,)
    s.end_epoch(1, 0.40)  # worse: switch to the sum over exits
    plan, moved = train_step(run, 2, 0, 5)
    assert plan.exits == (0, 1, 2)
    assert all(touched(moved, head("sst", i)) for i in range(3))
    s.end_epoch(2, 0.55)  # improved: keep
    assert s.step(3, 0, 5).exits == (0, 1, 2)
    s.end_epoch(3, 0.55)  # equal is not an improvement: switch back
    assert s.step(4, 0, 5).exits == (2,)
    s.end_epoch(4, float("nan"))  # a diverged epoch never counts as improved
    assert s.step(5, 0, 5).exits == (0, 1, 2) and s.best == 0.55


def test_smart_alt_state_survives_a_checkpoint(data):
    run = make_run(data, strategy="smart_alt")
    run.strategy.end_epoch(0, 0.5)
    run.strategy.end_epoch(1, 0.4)
    state = run.state_dict()
    resumed = make_run(data, strategy="smart_alt")
    resumed.load_state_dict(state)
    assert resumed.strategy.state_dict() == {"objective": "all", "best": 0.5}
    assert resumed.strategy.step(2, 0, 5).exits == (0, 1, 2)


def test_smart_alt_switch_is_driven_by_the_training_loop(data, monkeypatch):
    run = make_run(data, strategy="smart_alt", epochs=2)
    scores = iter([0.6, 0.3])
    run.evaluate = lambda split="dev": _FakeEval(next(scores))
    monkeypatch.setattr("berter.train.run.metric_row", lambda run, dev: {"dev_score": dev.dev_score})
    run.fit()
    assert run.strategy.state_dict() == {"objective": "all", "best": 0.6}


class _FakeEval:
    def __init__(self, score: float):
        self.dev_score = score


# ------------------------------------------------------------------ sequential layer focus


def test_slf_adds_one_leading_epoch_with_its_own_phase_and_fraction(data):
    run = make_run(data, strategy="two_stage", slf="on", slf_fraction=0.5)
    s = run.strategy
    assert isinstance(s, SequentialLayerFocus)
    assert s.num_epochs == 3
    assert [s.epoch_phase(e) for e in range(3)] == ["slf", "stage1", "stage2"]
    assert s.epoch_fraction(0) == 0.5 and s.epoch_fraction(1) == 1.0
    full = len(make_run(data, strategy="joint").epoch_batches(0))
    assert len(run.epoch_batches(0)) == round(full * 0.5)
    assert s.step(1, 0, 5).exits == (2,) and s.step(2, 0, 5).exits == (0, 1)


def test_slf_moves_through_the_layers_in_equal_slices_with_stable_trainable_sets(data):
    s = make_run(data, strategy="joint", slf="on").strategy
    plans = [s.step(0, k, 7) for k in range(7)]
    assert [p.exits for p in plans] == [(0,), (0,), (0,), (1,), (1,), (2,), (2,)]
    assert plans[0].trainable is plans[2].trainable  # same object: requires_grad set once
    assert plans[3].trainable is not plans[2].trainable


def test_slf_layer_two_trains_only_layer_two_and_head_two(data):
    run = make_run(data, strategy="joint", slf="on")
    plan, moved = train_step(run, 0, 4, 9)  # middle slice: 0-based layer 1
    assert plan.exits == (1,)
    assert moved and all(n.startswith(layer(1)) or n.startswith(head("sst", 1)) for n in moved)
    assert touched(moved, layer(1)) and touched(moved, head("sst", 1))


def slf_run(**overrides) -> TrainingRun:
    """An SLF run whose leading epoch is 30 steps: 10 per layer's slice."""
    data = load_data(None, TASKS, max_train=20, max_dev=8, seed=0, calib_fraction=0.0)
    cfg = tiny_config(strategy="joint", slf="on", batch_size=2, max_train=20, **overrides)
    return TrainingRun(cfg, data, backbone=tiny_backbone())


def record_steps(run: TrainingRun, at_step) -> list:
    """Call ``at_step(plan)`` as the training loop asks for each step's plan, before that
    step's update; returns what it returned, step by step."""
    seen, plan_of = [], run.strategy.step

    def step(epoch, k, num_steps):
        plan = plan_of(epoch, k, num_steps)
        seen.append(at_step(plan))
        return plan

    run.strategy.step = step
    return seen


def lr_factor(run: TrainingRun) -> float:
    group = run.optimizer.param_groups[0]
    return group["lr"] / group["initial_lr"]


def test_slf_gives_each_layers_slice_its_own_warmup_and_decay():
    run = slf_run(warmup_ratio=0.2)
    seen = record_steps(run, lambda plan: (plan.exits, lr_factor(run)))
    run.train_epoch()
    assert [exits for exits, _ in seen] == [(i,) for i in range(3) for _ in range(10)]
    for i in range(3):
        lrs = [lr for _, lr in seen[10 * i : 10 * (i + 1)]]
        # 10 steps: 2 of warmup (0, 1/2), the peak, then down to 1/8 at the last step
        assert lrs[0] == 0.0, f"slice {i} does not start a warmup"
        assert lrs[2] == pytest.approx(1.0), f"slice {i} does not reach the peak"
        assert lrs[5] == pytest.approx(5 / 8) and lrs[9] == pytest.approx(1 / 8), f"slice {i}"


def test_after_slf_the_main_phase_has_one_warmup_and_decay_over_all_its_steps():
    run = slf_run(warmup_ratio=0.2)
    run.train_epoch()
    seen = record_steps(run, lambda plan: lr_factor(run))
    report = run.train_epoch()
    param = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.SGD([param], lr=1.0)
    schedule = get_linear_schedule_with_warmup(reference, 6, 30)
    expected = []
    for _ in range(30):
        expected.append(schedule.get_last_lr()[0])
        reference.step()
        schedule.step()
    assert report.phase == "main" and seen == pytest.approx(expected)


@pytest.mark.parametrize("embeddings", [False, True])
def test_each_slf_slice_moves_only_its_layer_and_head_and_the_embeddings_if_asked(embeddings):
    run = slf_run(warmup_ratio=0.2, **({"slf_embeddings": True} if embeddings else {}))
    starts = {}
    record_steps(run, lambda plan: starts.setdefault(plan.exits[0], snapshot(run)))
    run.train_epoch()
    starts[3] = snapshot(run)
    for i in range(3):
        before, after = starts[i], starts[i + 1]
        moved = {n for n, p in before.items() if not torch.equal(p, after[n])}
        allowed = (layer(i), *(head(t, i) for t in TASKS)) + ((EMBEDDINGS,) if i == 0 else ())
        assert moved and all(n.startswith(allowed) for n in moved), f"slice {i}"
        assert touched(moved, layer(i)) and all(touched(moved, head(t, i)) for t in TASKS)
        assert touched(moved, EMBEDDINGS) == (embeddings and i == 0), f"slice {i}"


def test_slf_epoch_does_not_count_for_smart_alternating(data):
    s = make_run(data, strategy="smart_alt", slf="on").strategy
    s.end_epoch(0, 0.9)  # the SLF epoch's score
    s.end_epoch(1, 0.2)  # first epoch of the main strategy: an improvement for it
    assert s.state_dict() == {"inner": {"objective": "final", "best": 0.2}}
    s2 = make_run(data, strategy="smart_alt", slf="on").strategy
    s2.load_state_dict(s.state_dict())
    assert s2.inner.best == 0.2


def test_slf_then_main_strategy_gets_a_fresh_optimizer(data):
    run = make_run(data, strategy="joint", slf="on")
    run.train_epoch()
    slf_optimizer = run.optimizer
    report = run.train_epoch()
    assert report.phase == "main" and run.optimizer is not slf_optimizer


# ------------------------------------------------------------------ every combination


GRID = list(
    itertools.product(SMART_VALUES, COS_VALUES, CONCAT_VALUES, SLF_VALUES, sorted(STRATEGIES))
)


@pytest.mark.parametrize(("smart", "cos_loss", "concat", "slf", "strategy"), GRID)
def test_every_variant_trains_or_is_rejected_naming_the_conflict(
    data, smart, cos_loss, concat, slf, strategy
):
    axes = dict(smart=smart, cos_loss=cos_loss, concat=concat, slf=slf, strategy=strategy)
    cfg = tiny_config(max_train=8, **axes)
    try:
        check(cfg)
    except ConfigError as exc:
        named = [f"{k}={v}" for k, v in axes.items() if f"{k}={v}" in str(exc)]
        assert len(named) >= 2, f"conflict message names fewer than two axes: {exc}"
        return
    small = load_data(None, TASKS, max_train=8, seed=0, calib_fraction=0.0)
    run = TrainingRun(cfg, small, backbone=tiny_backbone(layers=2))
    for epoch in sorted({0, run.strategy.num_epochs - 1}):  # first and last phase
        run.epoch = epoch
        report = run.train_epoch()
        assert math.isfinite(report.train_loss) and report.examples > 0


@pytest.mark.parametrize(
    ("strategy", "exit_method"),
    [
        (s, e)
        for s in sorted(STRATEGIES)
        for e in sorted(EXIT_METHODS)
        if s != "final" or e == "none"
    ],
)
def test_every_exit_method_trains_under_every_strategy_with_slf(strategy, exit_method):
    cfg = tiny_config(max_train=8, slf="on", strategy=strategy, exit_method=exit_method)
    small = load_data(None, TASKS, max_train=8, seed=0, calib_fraction=0.0)
    run = TrainingRun(cfg, small, backbone=tiny_backbone(layers=2))
    for epoch in range(run.strategy.num_epochs):
        run.epoch = epoch
        assert math.isfinite(run.train_epoch().train_loss)


def test_two_stage_second_stage_also_trains_the_exit_module(data):
    run = make_run(data, strategy="two_stage", exit_method="lte")
    assert run.model.exit_module is not None
    run.train_epoch()
    before = snapshot(run)
    run.train_epoch()
    moved = changed(run, before)
    assert touched(moved, "exit_module.") and not touched(moved, BACKBONE)


def test_build_strategy_takes_the_model(data):
    run = make_run(data, strategy="alternating", slf="on")
    s = build_strategy(run.cfg, run.model)
    assert s.name == "slf+alternating" and s.n == run.model.num_layers


# ------------------------------------------------------------------ drop_top and optimisers


def test_drop_top_keeps_the_bottom_layers_and_trains_exits_over_them(data):
    backbone = tiny_backbone()
    bottom = [backbone.encoder.layer[i] for i in range(2)]
    cfg = tiny_config(drop_top=1, strategy="joint", warmup_ratio=0.0)
    run = TrainingRun(cfg, data, backbone=backbone)
    assert run.model.num_layers == 2 and list(run.model.bert.encoder.layer) == bottom
    run.build_optimizer(10)
    plan, moved = train_step(run, 0, 0, 10)
    assert plan.exits == (0, 1) and touched(moved, head("sst", 1))
    assert run.evaluate("dev").tasks["sst"].metrics.__len__() == 2


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD)],
)
def test_optimizer_choice_and_weight_decay_groups(data, name, cls):
    run = make_run(data, optimizer=name, weight_decay=0.05)
    assert type(run.optimizer) is cls
    names = {id(p): n for n, p in run.model.named_parameters()}
    for group in run.optimizer.param_groups:
        for p in group["params"]:
            n = names[id(p)]
            no_decay = n.endswith("bias") or "LayerNorm" in n
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), n
    _, moved = train_step(run, 0, 0, 10)
    assert touched(moved, layer(0))


def test_warmup_ratio_sets_a_linear_warmup_then_decay(data):
    run = make_run(data, strategy="joint", warmup_ratio=0.25, lr=1e-3)
    run.build_optimizer(8)  # 2 warmup steps, then 6 decay steps
    lrs = []
    for _ in range(8):
        lrs.append(run.scheduler.get_last_lr()[0])
        run.optimizer.step()
        run.scheduler.step()
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(5e-4) and lrs[2] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))


def test_grad_clip_bounds_the_gradient_norm(data):
    run = make_run(data, strategy="joint", grad_clip=1e-3)
    run.train_epoch()  # the last step's gradients stay on the parameters
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    assert (
        grads and torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 1e-3 * 1.001
    )
