import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_backbone, tiny_config

import berter.train.smart as smart
from berter.data.encode import encode, get_tokenizer, make_batches
from berter.data.files import load_data
from berter.exits.rules import build_exit_method
from berter.model.multi_exit import ExitOutput, MultiExitBert, load_backbone
from berter.tasks import TASKS
from berter.train.smart import adversarial_noise, divergence, smart_loss


def setup(task: str, backbone=None, **overrides):
    """A tiny model in eval mode (no dropout noise) and one demo batch of ``task``."""
    cfg = tiny_config(strategy="joint", smart="all", **overrides)
    backbone = backbone if backbone is not None else tiny_backbone()
    model = MultiExitBert.from_config(
        cfg, [TASKS[t] for t in cfg.tasks], backbone=backbone,
        exit_module=build_exit_method(cfg).build_module,
    )
    data = load_data(None, [task], max_train=8, seed=0, calib_fraction=0.0)
    t = TASKS[task]
    layout = cfg.pair_layout if t.is_pair else "packed"
    enc = encode(data.splits[task].train, t, get_tokenizer("packaged"), cfg.max_len, layout)
    batch = make_batches(enc, 8, shuffle=False, seed=0)[0]
    return cfg, model.eval(), batch


ALL_EXITS = (0, 1, 2)


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_adversarial_loss_is_zero_when_outputs_ignore_the_input(task):
    cfg, model, batch = setup(task)
    with torch.no_grad():
        for head in model.heads[task]:
            head.dense.weight.zero_()  # every exit now outputs a constant
    clean = model(batch)
    loss = smart_loss(model, batch, clean, ALL_EXITS, cfg).item()
    assert abs(loss) < 1e-6


@pytest.mark.parametrize(
    ("task", "cos_loss"),
    [("sst", "off"), ("para", "off"), ("sts", "off"), ("para", "on"), ("sts", "on")],
)
def test_adversarial_loss_is_positive_and_finite(task, cos_loss):
    cfg, model, batch = setup(task, cos_loss=cos_loss)
    torch.manual_seed(0)
    loss = smart_loss(model, batch, model(batch), ALL_EXITS, cfg).item()
    print(task, cos_loss, loss)
    assert math.isfinite(loss) and loss > 1e-4


def test_adversarial_gradient_reaches_the_backbone_and_word_embeddings():
    cfg, model, batch = setup("para")
    clean = [ExitOutput(o.logits.detach(), o.pooled.detach()) for o in model(batch)]
    smart_loss(model, batch, clean, ALL_EXITS, cfg).backward()  # only the adversarial branch
    for p in [*model.layer_parameters(0), model.bert.embeddings.word_embeddings.weight]:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_only_the_planned_exits_are_regularised():
    cfg, model, batch = setup("sst")
    clean = [ExitOutput(o.logits.detach(), o.pooled.detach()) for o in model(batch)]
    smart_loss(model, batch, clean, (0,), cfg).backward()
    assert all(p.grad is not None for p in model.layer_parameters(0))
    assert all(p.grad is None for p in model.layer_parameters(2))  # layers above exit 0 unused
    assert all(p.grad is None for p in model.head_parameters(1))


def test_clean_embeddings_are_not_modified():
    cfg, model, batch = setup("sts")
    table = model.bert.embeddings.word_embeddings.weight.detach().clone()
    embedded = model.embed(batch).hidden.detach().clone()
    smart_loss(model, batch, model(batch), ALL_EXITS, cfg)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, table)
    assert torch.equal(model.embed(batch).hidden, embedded)


def test_ascent_step_rescales_each_token_to_unit_infinity_norm():
    cfg, model, batch = setup("sst", smart_steps=2)
    n = adversarial_noise(model, batch, model(batch), ALL_EXITS, cfg)
    assert n.shape == model.embed(batch).hidden.shape
    assert torch.allclose(n.abs().amax(-1), torch.ones(n.shape[:2]), atol=1e-5)


@pytest.fixture(scope="module")
def packaged():
    return load_backbone("packaged", 0.1)


@pytest.mark.parametrize(
    ("task", "layout"),
    [
        ("sst", {}),
        ("para", {"concat": "before_embed"}),  # packed pair
        ("para", {"concat": "after_embed"}),
        ("sts", {"cos_loss": "on"}),  # siamese
    ],
)
def test_one_ascent_step_moves_the_embedding_output_by_well_under_its_own_size(
    packaged, task, layout
):
    """mt-dnn and smart-pytorch add the unit-infinity-norm noise to the embedding output, where
    it is a fraction of each token's largest coordinate; added before the embedding LayerNorm
    it outweighs the raw word embedding and the first layer sees mostly noise (ratio above 1)."""
    cfg, model, batch = setup(task, backbone=copy.deepcopy(packaged), smart_steps=1, **layout)
    seen = []
    hook = model.bert.encoder.layer[0].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach())
    )
    clean = model(batch)
    torch.manual_seed(0)
    smart_loss(model, batch, clean, (0, 5), cfg)
    hook.remove()
    embedded, perturbed = seen[0], seen[-1]  # the clean pass's first-layer input; the final pass's
    real = model.embed(batch).mask.bool()
    ratio = (perturbed - embedded).abs().amax(-1)[real] / embedded.abs().amax(-1)[real]
    print(task, layout, f"ratio mean {ratio.mean():.3f} max {ratio.max():.3f}")
    assert 0.1 < ratio.mean() < 0.6
    assert ratio.max() < 1.0


def test_smart_lambda_zero_trains_bit_identically_to_smart_off():
    from berter.train.run import TrainingRun

    runs = []
    for smart_cfg in ({"smart": "off"}, {"smart": "all", "smart_lambda": 0.0}):
        run = TrainingRun(tiny_config(max_train=16, **smart_cfg), backbone=tiny_backbone())
        runs.append((run.train_epoch().train_loss, run.model.state_dict()))
    (loss_off, off), (loss_zero, zero) = runs
    assert loss_off == loss_zero
    assert all(torch.equal(off[name], zero[name]) for name in off)


def test_non_finite_gradient_skips_the_ascent_step(monkeypatch):
    cfg, model, batch = setup("para", cos_loss="on", smart_steps=3)  # A and B rows stacked
    clean = model(batch)
    real_grad = torch.autograd.grad

    def nan_grad(outputs, inputs, **kw):
        return tuple(torch.full_like(x, float("nan")) for x in real_grad(outputs, inputs, **kw))

    monkeypatch.setattr(torch.autograd, "grad", nan_grad)
    torch.manual_seed(5)
    noise = adversarial_noise(model, batch, clean, ALL_EXITS, cfg)
    torch.manual_seed(5)
    initial = torch.randn_like(model.embed(batch).hidden) * cfg.smart_eps
    assert noise.shape[0] == 2 * batch.input_ids.shape[0]
    assert torch.equal(noise, initial)
    torch.manual_seed(5)
    assert math.isfinite(smart_loss(model, batch, clean, ALL_EXITS, cfg).item())


def test_binary_logit_is_compared_as_a_two_class_sigmoid_distribution():
    a, c = torch.tensor([0.3, -1.2]), torch.tensor([1.0, 0.5])
    got = divergence(ExitOutput(a, a), ExitOutput(c, c), regression=False)
    p, q = torch.sigmoid(a), torch.sigmoid(c)
    P, Q = torch.stack([1 - p, p], -1), torch.stack([1 - q, q], -1)
    kl = lambda x, y: (x * (x / y).log()).sum(-1).mean()  # noqa: E731
    assert torch.allclose(got, kl(Q, P) + kl(P, Q), atol=1e-6)


def test_regression_and_siamese_exits_use_mse():
    a, c = torch.tensor([0.3, -1.2]), torch.tensor([1.0, 0.5])
    assert torch.allclose(
        divergence(ExitOutput(a, a), ExitOutput(c, c), regression=True), F.mse_loss(a, c)
    )
    siamese = ExitOutput(a, a, pair=(a, a))  # a cosine, even for the binary paraphrase task
    assert torch.allclose(divergence(siamese, ExitOutput(c, c), regression=False), F.mse_loss(a, c))


def test_training_adds_smart_only_to_the_configured_task(monkeypatch):
    from berter.train.run import TrainingRun

    seen = []
    real = smart.smart_loss

    def spy(model, batch, outs, exits, cfg):
        seen.append(batch.task)
        return real(model, batch, outs, exits, cfg)

    monkeypatch.setattr(smart, "smart_loss", spy)
    run = TrainingRun(
        tiny_config(smart="para", max_train=16, warmup_ratio=0.0), backbone=tiny_backbone()
    )
    report = run.train_epoch()
    assert math.isfinite(report.train_loss)
    assert seen and set(seen) == {"para"}
