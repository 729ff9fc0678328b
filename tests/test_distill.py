import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_backbone, tiny_config

from berter.errors import ConfigError
from berter.model.losses import distill_loss
from berter.model.multi_exit import ExitOutput
from berter.strategies import StepPlan
from berter.sweep.space import parse_search, parse_settings
from berter.tasks import TASKS
from berter.train.run import TrainingRun


def out(logits: torch.Tensor) -> ExitOutput:
    return ExitOutput(logits=logits, pooled=torch.zeros(len(logits), 4))


def test_distill_loss_is_zero_when_the_exits_agree_and_positive_otherwise():
    torch.manual_seed(0)
    for task, shape in (("sst", (6, 5)), ("para", (6,)), ("sts", (6,))):
        a, b = torch.randn(shape), torch.randn(shape)
        assert distill_loss(TASKS[task], out(a), out(a.clone())).item() == pytest.approx(
            0, abs=1e-6
        )
        assert distill_loss(TASKS[task], out(a), out(b)).item() > 0.01


def test_binary_distillation_is_the_two_class_kl_and_regression_is_mse():
    torch.manual_seed(1)
    s, t = torch.randn(8), torch.randn(8)
    two = lambda x: torch.stack([torch.zeros_like(x), x], -1)  # noqa: E731
    kl = F.kl_div(F.log_softmax(two(s), -1), F.softmax(two(t), -1), reduction="batchmean")
    assert distill_loss(TASKS["para"], out(s), out(t)).item() == pytest.approx(kl.item(), rel=1e-5)
    assert distill_loss(TASKS["sts"], out(s), out(t)).item() == pytest.approx(
        F.mse_loss(s, t).item(), rel=1e-6
    )


def test_temperature_squared_keeps_the_loss_finite_as_temperature_grows():
    """At high T, T^2 * KL tends to half the variance of the logit gap (Hinton et al.)."""
    torch.manual_seed(2)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    d = s - t
    limit = 0.5 * ((d - d.mean(-1, keepdim=True)) ** 2).mean(-1).mean()
    loss = distill_loss(TASKS["sst"], out(s), out(t), temperature=200.0)
    assert loss.item() == pytest.approx(limit.item(), rel=1e-2)


def test_the_teacher_gets_no_gradient_from_distillation():
    s, t = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    distill_loss(TASKS["sst"], out(s), out(t), temperature=2.0).backward()
    assert t.grad is None and s.grad is not None


def run_and_batch(**overrides) -> tuple[TrainingRun, object]:
    run = TrainingRun(tiny_config(dropout=0.0, **overrides), backbone=tiny_backbone())
    batch = next(b for b in run.epoch_batches(0) if b.task == "sst")
    return run, batch


def test_step_loss_adds_the_weighted_distillation_of_each_trained_intermediate_exit():
    run, batch = run_and_batch(strategy="joint", exit_distill=0.7, distill_temperature=2.0)
    plan = run.strategy.step(0, 0, 1)
    assert run.students(plan) == (0, 1)
    with torch.no_grad():
        distilled = run.step_loss(batch, plan).item()
        run.cfg = run.cfg.replace(exit_distill=0.0)
        plain = run.step_loss(batch, plan).item()
        outs = run.model(batch)
        task = TASKS["sst"]
        extra = sum(distill_loss(task, outs[i], outs[2], 2.0).item() for i in (0, 1))
    assert distilled == pytest.approx(plain + 0.7 * extra, rel=1e-5)


def test_the_last_exits_head_learns_from_the_labels_alone():
    def last_head_grads(weight: float) -> list[torch.Tensor]:
        run, batch = run_and_batch(strategy="joint", exit_distill=weight)
        run.step_loss(batch, run.strategy.step(0, 0, 1)).backward()
        return [p.grad.clone() for p in run.model.heads["sst"][2].parameters()]

    for a, b in zip(last_head_grads(0.0), last_head_grads(5.0), strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def test_a_stage_that_trains_only_intermediate_exits_still_reads_the_last_one():
    run, batch = run_and_batch(strategy="two_stage", exit_distill=1.0)
    plan = run.strategy.step(1, 0, 1)  # the second stage: intermediate heads, frozen backbone
    assert 2 not in plan.exits and run.students(plan) == (0, 1)
    run.apply_trainable(plan)
    run.step_loss(batch, plan).backward()
    heads = run.model.heads["sst"]  # the batch's task
    assert all(p.grad is not None for p in heads[0].parameters())
    assert all(p.grad is None for p in heads[2].parameters())


def test_layer_focus_steps_and_final_only_steps_do_not_distil():
    run, _ = run_and_batch(strategy="joint", slf="on", exit_distill=1.0)
    assert run.students(run.strategy.step(0, 0, 3)) == ()  # SLF: the last exit is untrained
    assert run.students(run.strategy.step(1, 0, 3)) == (0, 1)  # then the joint strategy
    final, _ = run_and_batch(strategy="final", exit_distill=1.0)
    assert final.students(final.strategy.step(0, 0, 1)) == ()
    assert run.students(StepPlan(exits=(0,), teacher=True)) == (0,)


def dev_gap(weight: float) -> float:
    """Summed distillation loss between every intermediate exit and the last, on dev."""
    cfg = tiny_config(strategy="joint", exit_distill=weight, epochs=2)
    run = TrainingRun(cfg, backbone=tiny_backbone())
    run.fit()
    total = 0.0
    for t in run.evaluate("dev").tasks.values():
        last = out(t.logits[-1])
        total += sum(distill_loss(t.task, out(lg), last).item() for lg in t.logits[:-1])
    return total


def test_distillation_brings_the_intermediate_exits_closer_to_the_last():
    assert dev_gap(2.0) < 0.85 * dev_gap(0.0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("exit_distill", -0.5, "exit_distill must be >= 0"),
        ("distill_temperature", 0.0, "distill_temperature must be > 0"),
    ],
)
def test_bad_distillation_settings_are_rejected(field, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**{field: value}).validate()


def test_distillation_can_be_searched_or_fixed_in_a_sweep():
    assert [p.field for p in parse_search("distill")] == ["exit_distill"]
    assert [p.field for p in parse_search("exit_distill")] == ["exit_distill"]
    assert parse_settings(["exit_distill=1.5", "distill_temperature=2"], []) == {
        "exit_distill": 1.5,
        "distill_temperature": 2.0,
    }
