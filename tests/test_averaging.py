import pytest
import torch
from tiny import straight_and_resumed, tiny_backbone, tiny_config

from berter.errors import ConfigError
from berter.sweep.space import parse_search, parse_settings
from berter.sweep.trainable import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from berter.train.averaging import WeightAverage, WeightAveraging
from berter.train.run import TrainingRun


def average_of(run: TrainingRun) -> WeightAverage:
    """The run's weight average (its WeightAveraging callback's)."""
    (callback,) = [c for c in run.callbacks if isinstance(c, WeightAveraging)]
    return callback.average


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor] | torch.nn.Module, b: list[torch.Tensor] | torch.nn.Module) -> bool:
    """Tensor by tensor (within float32 rounding of the same arithmetic)."""
    a = list(a.parameters()) if isinstance(a, torch.nn.Module) else a
    b = list(b.parameters()) if isinstance(b, torch.nn.Module) else b
    return all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))


def test_weight_average_is_the_exponential_moving_average_of_the_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    avg = WeightAverage(model, decay=0.8)
    expected = None
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        avg.update()
        now = params(model)
        # the first update copies the weights; later ones move 1 - decay of the way
        expected = (
            now
            if expected is None
            else [0.8 * e + 0.2 * w for e, w in zip(expected, now, strict=True)]
        )
    raw = params(model)
    ids = [id(p) for p in model.parameters()]
    avg.use_average()
    assert same(model, expected)
    assert [id(p) for p in model.parameters()] == ids  # the optimiser's keys survive
    avg.use_average()  # idempotent
    avg.use_raw()
    assert same(model, raw)
    avg.use_average()
    with pytest.raises(RuntimeError, match="use_raw"):
        avg.update()  # folding the average into itself would be a silent error


def test_nothing_to_average_before_the_first_step_leaves_the_model_alone():
    model = torch.nn.Linear(2, 2)
    before = params(model)
    WeightAverage(model, decay=0.9).use_average()
    assert same(model, before)


def test_training_with_ema_follows_the_same_path_and_evaluates_the_average():
    plain = TrainingRun(tiny_config(epochs=2), backbone=tiny_backbone())
    ema = TrainingRun(tiny_config(epochs=2, ema_decay=0.9), backbone=tiny_backbone())
    plain.fit()
    report = ema.fit()
    steps = sum(len(ema.epoch_batches(e)) for e in range(2))
    assert int(average_of(ema).averaged.n_averaged) == steps
    # the raw weights (now in the average's copy) are exactly the plain run's
    assert same(plain.model, average_of(ema).averaged.module)
    # the model holds the average, and that is what was scored
    assert not same(plain.model, ema.model)
    assert ema.evaluate("dev").dev_score == report.metrics["dev_score"]


def test_resuming_with_ema_matches_an_uninterrupted_run(tmp_path):
    straight, resumed = straight_and_resumed(tiny_config(epochs=2, ema_decay=0.9), tmp_path)
    assert same(straight.model, resumed.model)
    assert same(average_of(straight).averaged.module, average_of(resumed).averaged.module)


def test_last_epoch_checkpoint_keeps_the_averaged_weights_only(tmp_path):
    cfg = tiny_config(epochs=1, ema_decay=0.9)
    run = TrainingRun(cfg, backbone=tiny_backbone())
    run.train_epoch()
    save_checkpoint(run, tmp_path, {}, optimizer=False)
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["average"] is None
    fresh = TrainingRun(cfg, backbone=tiny_backbone(seed=1))
    load_checkpoint(fresh, tmp_path)
    assert same(run.model, fresh.model)


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_outside_zero_to_one_is_rejected(decay):
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny_config(ema_decay=decay).validate()


def test_ema_is_searchable_and_settable_by_either_name():
    (param,) = parse_search("ema_decay")
    assert param.field == "ema_decay" and 0.0 in param.choices  # the search can turn it off
    assert parse_settings(["ema=0.999"], []) == parse_settings(["ema_decay=0.999"], [])
    assert parse_settings(["ema=0.999"], []) == {"ema_decay": 0.999}
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        parse_settings(["ema=1"], [])
