import pytest
import torch
from tiny import straight_and_resumed, tiny_backbone, tiny_config

from berter.errors import ConfigError
from berter.sweep.space import parse_search, parse_settings
from berter.train.run import TrainingRun


def lr_of(run: TrainingRun) -> dict[int, float]:
    """Each parameter's current learning rate, by id."""
    return {id(p): g["lr"] for g in run.optimizer.param_groups for p in g["params"]}


def rate(lr: dict[int, float], params) -> float:
    """The one learning rate a set of parameters shares."""
    (value,) = {lr[id(p)] for p in params}
    return value


def test_each_encoder_layer_trains_at_its_decayed_rate():
    run = TrainingRun(
        tiny_config(layer_lr_decay=0.5, lr=1e-3, warmup_ratio=0.0), backbone=tiny_backbone(layers=3)
    )
    run.build_optimizer(10)
    lr = lr_of(run)
    model = run.model
    assert rate(lr, model.embedding_parameters()) == pytest.approx(1e-3 * 0.5**3)
    for i, expected in enumerate((0.25, 0.5, 1.0)):  # the top layer keeps the full rate
        assert rate(lr, model.layer_parameters(i)) == pytest.approx(1e-3 * expected)
    assert rate(lr, [p for i in range(3) for p in model.head_parameters(i)]) == 1e-3
    # the schedule scales every group alike, so the ratios hold through warmup and decay
    for _ in range(2):
        run.optimizer.step()  # no gradients yet: moves nothing, but keeps torch's order
        run.scheduler.step()
    now = lr_of(run)
    emb = next(iter(model.embedding_parameters()))
    head = model.head_parameters(0)[0]
    assert now[id(emb)] / now[id(head)] == pytest.approx(0.125)


def test_weight_decay_groups_survive_layer_decay():
    run = TrainingRun(tiny_config(layer_lr_decay=0.8, weight_decay=0.05), backbone=tiny_backbone())
    run.build_optimizer(10)
    decay = {id(p): g["weight_decay"] for g in run.optimizer.param_groups for p in g["params"]}
    for name, p in run.model.named_parameters():
        undecayed = p.ndim < 2 or "LayerNorm" in name or name.endswith("bias")
        assert decay[id(p)] == (0.0 if undecayed else 0.05), name


def test_without_layer_decay_there_are_two_groups_even_at_zero_weight_decay():
    """Checkpoints from before layer decay existed hold two groups' optimiser state."""
    run = TrainingRun(tiny_config(weight_decay=0.0), backbone=tiny_backbone())
    run.build_optimizer(10)
    assert len(run.optimizer.param_groups) == 2


def test_layer_decay_moves_the_embeddings_less():
    def embedding_change(decay: float) -> float:
        run = TrainingRun(tiny_config(layer_lr_decay=decay), backbone=tiny_backbone())
        before = [p.detach().clone() for p in run.model.embedding_parameters()]
        run.train_epoch()
        after = run.model.embedding_parameters()
        return sum((a - b).abs().sum().item() for a, b in zip(after, before, strict=True))

    assert embedding_change(0.1) < 0.1 * embedding_change(1.0)


def test_resuming_with_layer_decay_matches_an_uninterrupted_run(tmp_path):
    straight, resumed = straight_and_resumed(tiny_config(epochs=2, layer_lr_decay=0.7), tmp_path)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_layer_decay_outside_zero_to_one_is_rejected(decay):
    with pytest.raises(ConfigError, match="layer_lr_decay must be in"):
        tiny_config(layer_lr_decay=decay).validate()


def test_layer_decay_is_searchable_and_settable_by_its_short_name():
    (param,) = parse_search("layer_decay")
    assert param.field == "layer_lr_decay" and param.high == 1.0  # the search can turn it off
    assert parse_settings(["layer_decay=0.9"], []) == {"layer_lr_decay": 0.9}
    assert parse_settings(["layer_lr_decay=0.9"], []) == {"layer_lr_decay": 0.9}


def test_the_model_builds_its_own_parameter_groups_with_the_exit_modules_rate():
    """nanoGPT's configure_optimizers shape: the groups come from the model, the exit module's
    rate from the caller (the exit method sits in a layer above the model)."""
    run = TrainingRun(tiny_config(exit_method="lte", strategy="joint"), backbone=tiny_backbone())
    model = run.model
    groups = model.parameter_groups(1e-3, 0.01, layer_lr_decay=0.5, exit_module_lr=7e-4)
    own = {id(p) for p in model.exit_module.parameters()}
    (module_group,) = [g for g in groups if {id(p) for p in g["params"]} == own]
    assert module_group["lr"] == 7e-4 and module_group["weight_decay"] == 0.0
    placed = [id(p) for g in groups for p in g["params"]]
    assert sorted(placed) == sorted(id(p) for p in model.parameters())  # each exactly once
    assert model.parameter_groups(1e-3, 0.01)[-1]["lr"] == 1e-3  # no rate of its own: lr
