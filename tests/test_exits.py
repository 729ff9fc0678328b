import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from exit_costs import TYPICAL
from tiny import tiny_backbone, tiny_config

from berter.data.encode import encode, get_tokenizer, make_batches
from berter.exits.base import ExitContext
from berter.exits.calibration import (
    Curve,
    as_param,
    choose,
    choose_per_layer,
    describe,
    operating_point,
    simulate,
    thresholds_from_metrics,
)
from berter.exits.cost import LAYERS_ONLY
from berter.exits.rules import EXIT_METHODS, QExit, build_exit_method
from berter.model.losses import task_loss
from berter.model.multi_exit import ExitOutput, MultiExitBert
from berter.tasks import TASKS, Example
from berter.train.evaluate import Evaluation, TaskEval

SST, PARA, STS = TASKS["sst"], TASKS["para"], TASKS["sts"]


def method(name: str, **cfg):
    return build_exit_method(tiny_config(strategy="joint", exit_method=name, **cfg))


def exit_layers(m, ctx, logits, param, pooled=None):
    """0-based exit layer per example from hand-made per-layer outputs."""
    pooled = pooled or [torch.zeros(len(x), 4) for x in logits]
    return m.exit_layers(m.layer_signals(ctx, logits, pooled), param).tolist()


def sst_logits(*probs_per_layer):
    """Per layer, logits whose softmax is the given distribution per example."""
    return [torch.tensor(p, dtype=torch.float32).log() for p in probs_per_layer]


# ----------------------------------------------------------------------------- exit rules
def test_registry_holds_every_method():
    expected = {"none", "confidence", "entropy", "lte", "patience", "qexit", "berter"}
    assert set(EXIT_METHODS) == expected


def test_confidence_exits_at_the_first_layer_reaching_the_threshold():
    ctx = ExitContext(SST, 3)
    logits = sst_logits(
        [[0.95, 0.05, 0, 0, 0], [0.5, 0.5, 0, 0, 0]],
        [[0.5, 0.5, 0, 0, 0], [0.2, 0.8, 0, 0, 0]],
        [[0.5, 0.5, 0, 0, 0], [0.5, 0.5, 0, 0, 0]],
    )
    m = method("confidence")
    assert exit_layers(m, ctx, logits, 0.9) == [0, 2]
    assert exit_layers(m, ctx, logits, 0.8) == [0, 1]
    assert exit_layers(m, ctx, logits, None) == [2, 2]


def test_paraphrase_confidence_is_max_of_p_and_one_minus_p():
    ctx = ExitContext(PARA, 2)
    p = torch.tensor([0.05, 0.6])
    logits = [torch.log(p / (1 - p)), torch.zeros(2)]
    sig = method("confidence").layer_signals(ctx, logits, [torch.zeros(2, 4)] * 2)
    assert torch.allclose(sig[0], torch.tensor([0.95, 0.6]), atol=1e-6)
    assert exit_layers(method("confidence"), ctx, logits, 0.9) == [0, 1]


def test_confidence_and_entropy_never_exit_early_on_regression():
    ctx = ExitContext(STS, 3)
    logits = [torch.tensor([1.0, 4.0])] * 3
    for name, param in (("confidence", 0.0), ("entropy", 10.0)):
        assert exit_layers(method(name), ctx, logits, param) == [2, 2]
        assert method(name).grid(STS, 3) == []


def test_entropy_exits_when_entropy_falls_to_the_threshold():
    ctx = ExitContext(SST, 2)
    logits = sst_logits([[0.97, 0.01, 0.01, 0.005, 0.005], [0.2] * 5], [[0.2] * 5, [0.2] * 5])
    m = method("entropy")
    sig = m.layer_signals(ctx, logits, [torch.zeros(2, 4)] * 2)
    assert sig[0, 1].item() == pytest.approx(math.log(5), abs=1e-5)
    assert exit_layers(m, ctx, logits, 0.2) == [0, 1]
    assert all(t < math.log(5) for t in m.grid(SST, 2))


def test_lte_exits_when_learned_certainty_reaches_the_threshold():
    m = method("lte")
    module = m.build_module(4, [STS])
    with torch.no_grad():
        module["sts"].weight.copy_(torch.tensor([[1.0, 0, 0, 0]]))
        module["sts"].bias.zero_()
    ctx = ExitContext(STS, 3, module)
    pooled = [
        torch.tensor([[2.0, 0, 0, 0], [-2.0, 0, 0, 0]]),
        torch.tensor([[0.0] * 4, [3.0, 0, 0, 0]]),
    ]
    pooled.append(torch.zeros(2, 4))
    logits = [torch.zeros(2)] * 3
    # u = sigmoid(2) = 0.88 for example 0 at layer 1; sigmoid(3) = 0.95 for example 1 at layer 2
    assert exit_layers(m, ctx, logits, 0.85, pooled) == [0, 1]
    assert exit_layers(m, ctx, logits, 0.9, pooled) == [2, 1]


def test_patience_needs_that_many_consecutive_agreements():
    ctx = ExitContext(SST, 5)
    a, b = [0.9, 0.1, 0, 0, 0], [0.1, 0.9, 0, 0, 0]
    # example 0: a a a ... agrees from layer 2; example 1: a b b b b agrees from layer 3
    logits = sst_logits([a, a], [a, b], [a, b], [a, b], [a, b])
    m = method("patience")
    assert exit_layers(m, ctx, logits, 1) == [1, 2]
    assert exit_layers(m, ctx, logits, 2) == [2, 3]
    assert exit_layers(m, ctx, logits, 4) == [4, 4]
    assert m.grid(SST, 5) == [1.0, 2.0, 3.0, 4.0]


def test_patience_on_regression_uses_the_delta():
    ctx = ExitContext(STS, 4)
    logits = [torch.tensor(v) for v in ([1.0, 1.0], [1.1, 2.0], [1.15, 3.0], [1.0, 1.0])]
    m = method("patience", regression_delta=0.2)
    assert exit_layers(m, ctx, logits, 2) == [2, 3]


def constant_lambda_module(lam: float, hidden: int = 4):
    """A Lambda module whose halting probability is lam at every layer."""
    module = QExit(tiny_config()).build_module(hidden, [SST])
    last = module["sst"].net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(math.log(lam / (1 - lam)))
    return module


def test_qexit_signal_is_the_cumulative_halting_probability():
    m = method("qexit")
    ctx = ExitContext(SST, 4, constant_lambda_module(0.3))
    logits = [torch.zeros(1, 5)] * 4
    sig = m.layer_signals(ctx, logits, [torch.randn(1, 4) for _ in range(4)])
    expected = [1 - 0.7, 1 - 0.7**2, 1 - 0.7**3, 1.0]
    assert torch.allclose(sig[:, 0], torch.tensor(expected), atol=1e-6)
    assert exit_layers(m, ctx, logits, 0.5) == [1]  # 0.51 > 0.5 at layer 2
    assert exit_layers(m, ctx, logits, 0.25) == [0]


def test_berter_uses_confidence_for_classification_and_lte_for_regression():
    m = method("berter")
    module = m.build_module(4, [SST, PARA, STS])
    assert set(module.keys()) == {"sts"}
    with torch.no_grad():
        module["sts"].weight.fill_(0.0)
        module["sts"].bias.fill_(3.0)  # u = 0.95 everywhere
    sst_ctx, sts_ctx = ExitContext(SST, 2, module), ExitContext(STS, 2, module)
    sst = sst_logits([[0.95, 0.05, 0, 0, 0]], [[0.5, 0.5, 0, 0, 0]])
    assert exit_layers(m, sst_ctx, sst, 0.9) == [0]
    assert exit_layers(m, sts_ctx, [torch.zeros(1)] * 2, 0.9) == [0]
    assert exit_layers(m, sts_ctx, [torch.zeros(1)] * 2, 0.99) == [1]


def test_siamese_paraphrase_confidence_is_the_margin_to_the_calibrated_threshold():
    ctx = ExitContext(PARA, 2, siamese=True, cos_threshold=torch.tensor([0.6, 0.5]))
    cos = [torch.tensor([0.6, 1.0, -0.2]), torch.zeros(3)]
    sig = method("confidence").layer_signals(ctx, cos, [torch.zeros(3, 4)] * 2)
    assert torch.allclose(sig[0], torch.tensor([0.5, 0.7, 0.9]), atol=1e-6)


# ----------------------------------------------------------------------------- training losses
@pytest.fixture(scope="module")
def tiny_model_and_batches():
    cfg = tiny_config(strategy="joint", exit_method="qexit")
    tasks = [TASKS[t] for t in cfg.tasks]
    tok = get_tokenizer("packaged")
    pairs = [
        Example("a", "a cat sat on the mat", "the cat is sitting on a mat", 1),
        Example("b", "stocks fell sharply today", "it will rain tomorrow", 0),
        Example("c", "hello there", "hello there my good old friend", 1),
    ]
    batches = {}
    for t in tasks:
        ex = pairs if t.is_pair else [Example(e.id, e.text_a, None, i) for i, e in enumerate(pairs)]
        if t.is_regression:
            ex = [Example(e.id, e.text_a, e.text_b, 3.5 * e.label + 0.5) for e in ex]
        enc = encode(ex, t, tok, 32, "separate" if t.is_pair else "packed")
        batches[t.name] = make_batches(enc, 8, shuffle=False, seed=0)[0]
    return tasks, batches


def build(name: str, tasks):
    cfg = tiny_config(strategy="joint", exit_method=name)
    return cfg, MultiExitBert.from_config(cfg, tasks, backbone=tiny_backbone(),
        exit_module=build_exit_method(cfg).build_module)


@pytest.mark.parametrize("name", ["lte", "qexit", "berter"])
@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_learned_exit_losses_are_finite_and_reach_module_and_backbone(
    tiny_model_and_batches, name, task
):
    tasks, batches = tiny_model_and_batches
    cfg, model = build(name, tasks)
    m = build_exit_method(cfg)
    batch = batches[task]
    outs = model(batch)
    loss = m.training_loss(
        model.tasks[task], outs, batch.labels, tuple(range(model.num_layers)), model.exit_module
    )
    assert torch.isfinite(loss)
    loss.backward()
    layer0 = model.bert.encoder.layer[0].attention.self.query.weight.grad
    assert layer0 is not None and layer0.abs().sum() > 0
    if name == "berter" and task != "sts":
        assert task not in model.exit_module  # classification: confidence, no module
        return
    grads = [p.grad for p in model.exit_module[task].parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("trained_only", [False, True])
def test_lte_loss_is_the_trained_task_losses_plus_certainty_mse_of_every_or_the_trained_exits(
    tiny_model_and_batches, trained_only
):
    tasks, batches = tiny_model_and_batches
    restrict = {"exit_module_trained_only": True} if trained_only else {}  # default: every
    cfg = tiny_config(strategy="joint", exit_method="lte", **restrict)
    model = MultiExitBert.from_config(
        cfg, tasks, backbone=tiny_backbone(), exit_module=build_exit_method(cfg).build_module
    )
    m = build_exit_method(cfg)
    batch = batches["sts"]
    with torch.no_grad():
        outs = model.eval()(batch)
        loss = m.training_loss(STS, outs, batch.labels, (1,), model.exit_module)
        j = []
        for o in outs:
            u = torch.sigmoid(model.exit_module["sts"](o.pooled).squeeze(-1))
            target = 1 - torch.tanh((o.logits - batch.labels).abs())
            j.append(((u - target) ** 2).mean())
        certainty = j[1] if trained_only else sum(j) / 3  # BERxiT's code: the mean over layers
        expected = task_loss(STS, outs[1], batch.labels) + certainty
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_qexit_restricted_to_a_single_trained_exit_is_the_plain_task_loss(
    tiny_model_and_batches,
):
    tasks, batches = tiny_model_and_batches
    cfg = tiny_config(strategy="joint", exit_method="qexit", exit_module_trained_only=True)
    model = MultiExitBert.from_config(
        cfg, tasks, backbone=tiny_backbone(), exit_module=build_exit_method(cfg).build_module
    )
    m = build_exit_method(cfg)
    batch = batches["sst"]
    outs = model(batch)
    last = model.num_layers - 1
    loss = m.training_loss(SST, outs, batch.labels, (last,), model.exit_module)
    assert loss.item() == pytest.approx(task_loss(SST, outs[last], batch.labels).item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in model.exit_module.parameters())


def test_qexit_on_a_single_trained_exit_adds_palberts_loss_over_every_exit(
    tiny_model_and_batches,
):
    tasks, batches = tiny_model_and_batches
    cfg = tiny_config(strategy="joint", exit_method="qexit", qexit_prior=0.1, qexit_beta=0.5)
    model = MultiExitBert.from_config(
        cfg, tasks, backbone=tiny_backbone(), exit_module=build_exit_method(cfg).build_module
    )
    model.exit_module = constant_lambda_module(0.1, hidden=32)  # halting = prior: no KL
    m = build_exit_method(cfg)
    batch = batches["sst"]
    with torch.no_grad():
        outs = model.eval()(batch)
        loss = m.training_loss(SST, outs, batch.labels, (2,), model.exit_module)
        prior = torch.tensor([0.1, 0.09, 0.81])
        ce = torch.nn.functional.cross_entropy
        per_layer = torch.stack([ce(o.logits, batch.labels, reduction="none") for o in outs])
        expected = (
            task_loss(SST, outs[2], batch.labels) + (prior[:, None] * per_layer).sum(0).mean()
        )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def leaf_outputs(layers: int = 3, batch: int = 4, hidden: int = 32) -> list[ExitOutput]:
    """SST exit outputs whose logits and pooled vectors are leaves, to see what gets gradient."""
    torch.manual_seed(0)
    return [
        ExitOutput(
            torch.randn(batch, 5, requires_grad=True),
            torch.randn(batch, hidden, requires_grad=True),
        )
        for _ in range(layers)
    ]


@pytest.mark.parametrize("name", ["lte", "qexit"])
@pytest.mark.parametrize("trained_only", [False, True])
def test_on_a_final_exit_step_the_module_reads_earlier_exits_but_not_their_task_losses(
    name, trained_only
):
    m = method(name, **({"exit_module_trained_only": True} if trained_only else {}))
    module = m.build_module(32, [SST])
    outs = leaf_outputs()
    m.training_loss(SST, outs, torch.tensor([0, 1, 2, 3]), (2,), module).backward()
    for o in outs[:2]:
        assert o.logits.grad is None  # no task loss or certainty target of an untrained exit
        # the module's input is not detached (BERxiT's and PALBERT's code): gradient flows on
        assert (o.pooled.grad is not None and o.pooled.grad.abs().sum() > 0) != trained_only
    module_moves = any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert module_moves == (name == "lte" or not trained_only)


def test_qexit_kl_vanishes_when_halting_matches_the_prior(tiny_model_and_batches):
    tasks, batches = tiny_model_and_batches
    cfg = tiny_config(strategy="joint", exit_method="qexit", qexit_prior=0.1, qexit_beta=0.5)
    model = MultiExitBert.from_config(cfg, tasks, backbone=tiny_backbone(),
        exit_module=build_exit_method(cfg).build_module)
    model.exit_module = constant_lambda_module(0.1, hidden=32)
    m = build_exit_method(cfg)
    batch = batches["sst"]
    with torch.no_grad():
        outs = model.eval()(batch)
        loss = m.training_loss(SST, outs, batch.labels, (0, 1, 2), model.exit_module)
        prior = torch.tensor([0.1, 0.09, 0.81])
        ce = torch.nn.functional.cross_entropy
        per_layer = torch.stack([ce(o.logits, batch.labels, reduction="none") for o in outs])
        expected = (prior[:, None] * per_layer).sum(0).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_halting_distribution_sums_to_one():
    z = torch.randn(5, 7)
    assert torch.allclose(QExit.log_halting(z).exp().sum(0), torch.ones(7), atol=1e-6)


def test_patience_loss_weights_exits_by_depth():
    m = method("patience")
    labels = torch.tensor([0, 1])
    outs = [ExitOutput(torch.randn(2, 5), torch.zeros(2, 4)) for _ in range(4)]
    losses = [task_loss(SST, o, labels) for o in outs]
    got = m.training_loss(SST, outs, labels, (0, 1, 2, 3), None)
    weighted = (1 * losses[0] + 2 * losses[1] + 3 * losses[2] + 4 * losses[3]) / 10
    assert got.item() == pytest.approx(weighted.item())
    only_some = m.training_loss(SST, outs, labels, (1, 3), None)
    assert only_some.item() == pytest.approx(((2 * losses[1] + 4 * losses[3]) / 6).item())


# ----------------------------------------------------------------------------- operating point
def test_choose_takes_the_fastest_setting_within_tolerance():
    curve = Curve([0.5, 0.7, 0.9], metrics=[0.80, 0.895, 0.91], avg_layers=[1.5, 2.5, 4.0])
    assert choose(curve, final=0.90, tolerance=0.01) == 0.7
    assert choose(curve, final=0.90, tolerance=0.15) == 0.5
    assert choose(curve, final=0.95, tolerance=0.01) is None


def task_eval(task, labels, probs_per_layer):
    logits = [torch.tensor(p, dtype=torch.float32).log() for p in probs_per_layer]
    preds = [lg.argmax(-1).numpy() for lg in logits]
    gold = np.asarray(labels, dtype=np.float64)
    metrics = [float((p == gold).mean()) for p in preds]
    pooled = [torch.zeros(len(labels), 4) for _ in logits]
    return TaskEval(task, gold, logits, pooled, preds, metrics)


def fake_run(cfg, evaluate, costs=TYPICAL):
    """Just what operating_point reads from a TrainingRun: a 3-layer SST model, no modules,
    and the engine's cost model (given, never timed)."""
    model = SimpleNamespace(
        num_layers=3, exit_module=None, siamese=False, cos_threshold=torch.full((3,), 0.5)
    )
    return SimpleNamespace(
        method=build_exit_method(cfg), cfg=cfg, tasks=[SST], model=model, evaluate=evaluate,
        exit_costs=lambda: {"sst": costs},
    )  # fmt: skip


def test_operating_point_is_chosen_on_calibration_data_not_dev():
    sure_a, sure_b, unsure_b = [0.95, 0.05, 0, 0, 0], [0.05, 0.95, 0, 0, 0], [0.3, 0.7, 0, 0, 0]
    # calibration: layer 1 is confident and right, so exiting there costs nothing
    calib = task_eval(SST, [0, 1], [[sure_a, sure_b], [sure_a, sure_b], [sure_a, sure_b]])
    # dev: layer 1 is confident and wrong on example 0; the last layer is right
    dev = task_eval(SST, [1, 1], [[sure_a, sure_b], [unsure_b, sure_b], [unsure_b, sure_b]])
    splits = []

    def evaluate(split):
        splits.append(split)
        return Evaluation({"sst": calib}, 3)

    cfg = tiny_config(strategy="joint", exit_method="confidence", tasks=("sst",), exit_per_layer=False)
    run = fake_run(cfg, evaluate)
    row = operating_point(run, Evaluation({"sst": dev}, 3))
    assert splits == ["calib"]
    assert row["sst_exit_layer"] == 1.0 and row["avg_exit_layer"] == 1.0
    assert row["layers_saved"] == pytest.approx(2 / 3)
    assert row["sst_acc_exit"] == 0.5  # dev pays for the calibration choice
    assert row["sst_threshold"] <= 0.95
    table = [r for r in row["exit_table"] if r["task"] == "sst"]
    assert len(table) == len(run.method.grid(SST, 3))
    assert {"task", "exit_method", "threshold", "metric", "avg_exit_layer"} <= set(table[0])
    # a fixed threshold skips calibration
    run.cfg = cfg.replace(exit_threshold=0.99)
    splits.clear()
    fixed = operating_point(run, Evaluation({"sst": dev}, 3))
    assert splits == [] and fixed["sst_threshold"] == 0.99 and fixed["sst_exit_layer"] == 3.0


def test_none_reports_the_last_layer_and_a_fixed_layer_curve():
    dev = task_eval(SST, [0, 1], [[[0.9, 0.1, 0, 0, 0]] * 2] * 3)
    cfg = tiny_config(tasks=("sst",))
    run = fake_run(cfg, evaluate=None)
    row = operating_point(run, Evaluation({"sst": dev}, 3))
    assert row["avg_exit_layer"] == 3.0 and row["layers_saved"] == 0.0
    assert math.isnan(row["sst_threshold"])
    assert [r["avg_exit_layer"] for r in row["exit_table"]] == [1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------- per-layer settings
def test_a_per_layer_setting_applies_each_layers_own_threshold():
    m = method("confidence")
    ctx = ExitContext(SST, 3)
    sure, fairly = [0.95, 0.05, 0, 0, 0], [0.7, 0.3, 0, 0, 0]
    logits = sst_logits([sure, fairly, fairly], [sure, fairly, sure], [sure, sure, sure])
    assert exit_layers(m, ctx, logits, 0.9) == [0, 2, 1]
    assert exit_layers(m, ctx, logits, (0.9, 0.6)) == [0, 1, 1]
    assert exit_layers(m, ctx, logits, (None, 0.6)) == [1, 1, 1]
    assert exit_layers(m, ctx, logits, (None, None)) == [2, 2, 2]


def easy_and_hard(n_easy: int = 20, n_hard: int = 20):
    """SST exits where layer 1 is sure and right on easy examples and wrongly fairly sure on
    hard ones, which layer 2 gets right with less confidence: only a per-layer setting can
    send the easy ones out at layer 1 and the hard ones at layer 2."""
    easy_1, hard_1 = [0.05, 0.95, 0, 0, 0], [0.9, 0.1, 0, 0, 0]
    hard_2, last = [0.3, 0.7, 0, 0, 0], [0.05, 0.95, 0, 0, 0]
    return task_eval(
        SST,
        [1] * (n_easy + n_hard),
        [[easy_1] * n_easy + [hard_1] * n_hard, [easy_1] * n_easy + [hard_2] * n_hard,
         [last] * (n_easy + n_hard)],
    )  # fmt: skip


def test_per_layer_choice_exits_earlier_than_any_shared_threshold_at_no_loss():
    m, ctx, te = method("confidence"), ExitContext(SST, 3), easy_and_hard()
    grid = m.grid(SST, 3)
    shared = choose(simulate(m, ctx, te, grid), te.final, 0.01)
    per_layer = choose_per_layer(m, ctx, te, grid, tolerance=0.01, confidence=0.9, cost=TYPICAL)
    shared_at, layered_at = simulate(m, ctx, te, [shared, per_layer]).avg_layers
    assert shared_at == 2.0  # easy at layer 1, hard at the last: 0.7 at layer 2 is too low
    assert layered_at == 1.5  # easy at layer 1, hard at layer 2
    assert per_layer[0] > 0.9 >= per_layer[1]
    assert simulate(m, ctx, te, [per_layer]).metrics == [1.0]


def test_per_layer_choice_keeps_the_tolerance_in_most_resamples_not_just_on_average():
    # 100 examples, all right at the last layer; layer 1 is equally sure of 50, one of them
    # wrong: exiting them costs 1%, inside a 1.1% tolerance on the slice, and more than that
    # in about a quarter of bootstrap resamples (those holding the wrong one twice or more)
    m, ctx = method("confidence"), ExitContext(SST, 2)
    sure_right, sure_wrong, unsure = (
        [0.05, 0.95, 0, 0, 0],
        [0.95, 0.05, 0, 0, 0],
        [0.3, 0.7, 0, 0, 0],
    )
    first = [sure_right] * 49 + [sure_wrong] + [unsure] * 50
    te = task_eval(SST, [1] * 100, [first, [sure_right] * 100])
    grid = m.grid(SST, 2)
    assert choose_per_layer(m, ctx, te, grid, 0.011, confidence=0.0, cost=TYPICAL) is not None
    assert choose_per_layer(m, ctx, te, grid, 0.011, confidence=0.9, cost=TYPICAL) is None
    assert choose_per_layer(m, ctx, te, grid, 0.03, confidence=0.9, cost=TYPICAL) is not None


def test_per_layer_choice_works_for_pearson_on_regression():
    m, ctx = method("lte"), ExitContext(STS, 2)
    gold = np.linspace(0, 5, 40)
    near = gold + np.where(np.arange(40) % 2 == 0, 0.01, -0.01)
    logits = [torch.tensor(near, dtype=torch.float32), torch.tensor(gold, dtype=torch.float32)]
    preds = [lg.numpy() for lg in logits]
    te = TaskEval(STS, gold, logits, [torch.zeros(40, 4)] * 2, preds, [
        float(np.corrcoef(p, gold)[0, 1]) for p in preds
    ])  # fmt: skip
    ctx.module = torch.nn.ModuleDict({"sts": torch.nn.Linear(4, 1)})
    with torch.no_grad():
        ctx.module["sts"].weight.zero_()
        ctx.module["sts"].bias.fill_(3.0)  # certainty sigmoid(3) = 0.95 everywhere
    chosen = choose_per_layer(m, ctx, te, m.grid(STS, 2), 0.01, 0.9, TYPICAL)
    assert chosen is not None and simulate(m, ctx, te, [chosen]).avg_layers == [1.0]


def test_operating_point_reports_per_layer_thresholds_that_round_trip():
    te = easy_and_hard()
    cfg = tiny_config(strategy="joint", exit_method="confidence", tasks=("sst",), exit_per_layer=False)
    run = fake_run(cfg.replace(exit_per_layer=True), lambda split: Evaluation({"sst": te}, 3))
    row = operating_point(run, Evaluation({"sst": te}, 3))
    assert math.isnan(row["sst_threshold"])
    layered = row["sst_layer_thresholds"]
    assert len(layered) == 2 and layered[0] > 0.9 >= layered[1]
    assert row["sst_exit_layer"] == 1.5
    assert thresholds_from_metrics(row, ["sst"]) == {"sst": tuple(layered)}
    fewest_layers = fake_run(cfg, lambda split: Evaluation({"sst": te}, 3), LAYERS_ONLY)
    shared = operating_point(fewest_layers, Evaluation({"sst": te}, 3))
    assert shared["sst_layer_thresholds"] is None and shared["sst_exit_layer"] == 2.0


def test_stored_per_layer_settings_read_back_with_never_as_none():
    assert as_param([0.9, None, float("nan")]) == (0.9, None, None)
    assert as_param([None, None]) is None
    assert as_param(float("nan")) is None and as_param(0.5) == 0.5
    assert describe((0.96, None, 0.3)) == "0.96/-/0.3"
    assert describe(None) == "none (last layer)" and describe(0.9) == "0.9"


def test_per_layer_choice_without_calibration_data_is_no_early_exit():
    nan = float("nan")
    empty = TaskEval(
        SST, np.zeros(0), [torch.zeros(0, 5)] * 3, [torch.zeros(0, 4)] * 3, [np.zeros(0)] * 3,
        [nan] * 3,
    )  # fmt: skip
    m = method("confidence")
    grid = m.grid(SST, 3)
    assert choose_per_layer(m, ExitContext(SST, 3), empty, grid, 0.01, 0.9, TYPICAL) is None


def test_operating_point_uses_a_calibration_evaluation_it_is_given():
    te = easy_and_hard()
    splits = []
    cfg = tiny_config(strategy="joint", exit_method="confidence", tasks=("sst",), exit_per_layer=False)
    run = fake_run(cfg, lambda split: splits.append(split))
    row = operating_point(run, Evaluation({"sst": te}, 3), Evaluation({"sst": te}, 3))
    assert splits == [] and row["sst_exit_layer"] == 2.0


def test_by_default_each_exit_layer_gets_its_own_threshold():
    te = easy_and_hard()
    cfg = tiny_config(strategy="joint", exit_method="confidence", tasks=("sst",))
    row = operating_point(fake_run(cfg, lambda split: Evaluation({"sst": te}, 3)),
                          Evaluation({"sst": te}, 3))  # fmt: skip
    assert math.isnan(row["sst_threshold"]) and len(row["sst_layer_thresholds"]) == 2
    assert row["sst_exit_layer"] == 1.5  # easy examples at layer 1, hard ones at layer 2
