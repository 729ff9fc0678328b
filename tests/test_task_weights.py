import pytest
import torch
from tiny import tiny_backbone, tiny_config

from berter.errors import ConfigError
from berter.sweep.space import parse_settings
from berter.train.evaluate import metric_row
from berter.train.run import TrainingRun


def first_batch_losses(cfg) -> dict[str, float]:
    """Each task's training loss on its first batch, from the same starting weights."""
    run = TrainingRun(cfg, backbone=tiny_backbone())
    plan = run.strategy.step(0, 0, 1)
    losses = {}
    for batch in run.epoch_batches(0):
        if batch.task not in losses:
            losses[batch.task] = run.step_loss(batch, plan).item()
    return losses


def test_a_task_weight_scales_only_that_tasks_loss():
    base = tiny_config(dropout=0.0)
    plain = first_batch_losses(base)
    weighted = first_batch_losses(base.replace(task_weights="sst=3, sts=0.5"))
    assert weighted["sst"] == pytest.approx(3 * plain["sst"], rel=1e-5)
    assert weighted["sts"] == pytest.approx(0.5 * plain["sts"], rel=1e-5)
    assert weighted["para"] == pytest.approx(plain["para"], rel=1e-6)


def test_a_task_weighted_zero_leaves_its_head_untrained():
    cfg = tiny_config(task_weights="sst=0", weight_decay=0.0)  # decay alone would move it
    run = TrainingRun(cfg, backbone=tiny_backbone())
    heads = run.model.heads
    before = {t: [p.detach().clone() for p in heads[t].parameters()] for t in ("sst", "sts")}
    run.train_epoch()

    def moved(task: str) -> bool:
        now = heads[task].parameters()
        return not all(torch.equal(a, b) for a, b in zip(now, before[task], strict=True))

    assert not moved("sst") and moved("sts")
    assert "sst_acc" in metric_row(run, run.evaluate("dev"))  # still evaluated like any task


def test_default_weights_are_one_for_every_task():
    assert tiny_config().loss_weights() == {"sst": 1.0, "para": 1.0, "sts": 1.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sst=-1", "not TASK=WEIGHT"),
        ("sst", "not TASK=WEIGHT"),
        ("sst=two", "not TASK=WEIGHT"),
        ("sst=nan", "not TASK=WEIGHT"),
        ("imdb=2", "'imdb' is not one of the tasks"),
        ("sst=0,para=0,sts=0", "leaves no task to train"),
    ],
)
def test_bad_task_weights_are_rejected_with_the_reason(text, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(task_weights=text).validate()


def test_task_weights_can_be_fixed_for_a_sweep():
    assert parse_settings(["task_weights=sst=2,sts=0.5"], []) == {"task_weights": "sst=2,sts=0.5"}
    with pytest.raises(ConfigError, match="not TASK=WEIGHT"):
        parse_settings(["task_weights=sst=-2"], [])
