"""Every encoder family the early-exit papers use runs layer by layer as transformers runs it,
trains under every strategy and exit method, exits early where the post-hoc tables say, takes
SMART, and saves and loads: tiny random configs of each family, built here (no downloads).

The packaged tokenizer (bert-base-uncased's 30,522 word pieces) feeds every family, so each
tiny config has that vocabulary and, for RoBERTa, the tokenizer's padding id.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from engine_check import assert_engine_exits_where_the_simulation_says
from tiny import tiny_config
from transformers import (
    AlbertConfig,
    AutoModel,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    PreTrainedModel,
    RobertaConfig,
)

from berter.checkpoint import load_model, save_model
from berter.data.encode import encode, get_tokenizer, make_batches
from berter.data.files import load_data
from berter.errors import ConfigError
from berter.exits.rules import build_exit_method
from berter.infer import main as infer_main
from berter.model.families import FAMILIES, check_model_type, family_of
from berter.model.multi_exit import MultiExitBert, load_backbone
from berter.tasks import TASKS, Example
from berter.train.run import TrainingRun
from berter.train.smart import adversarial_noise, smart_loss

MODEL_TYPES = ("bert", "roberta", "albert", "electra", "distilbert", "deberta-v2")
WITH_TOKEN_TYPES = {"bert", "albert", "electra"}
VOCAB = 30522  # the packaged tokenizer's


def tiny_config_of(model_type: str, layers: int = 2, init: float = 0.02, **extra):
    """A 32-wide random config of one family; ``init`` > 0.02 spreads the exit signals."""
    common = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=130, initializer_range=init,
    )  # fmt: skip
    if model_type == "bert":
        return BertConfig(**common, **extra)
    if model_type == "roberta":  # one token type, as released RoBERTa checkpoints have
        return RobertaConfig(**common, type_vocab_size=1, pad_token_id=0, **extra)
    if model_type == "albert":  # embeddings narrower than the encoder, one shared group
        return AlbertConfig(**common, embedding_size=16, **extra)
    if model_type == "electra":  # narrower embeddings: embeddings_project in between
        return ElectraConfig(**common, embedding_size=16, **extra)
    if model_type == "distilbert":
        return DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=layers, n_heads=2, hidden_dim=37,
            max_position_embeddings=130, initializer_range=init, **extra,
        )  # fmt: skip
    if model_type == "deberta-v2":  # DeBERTa-v3's shape: relative positions only, no types
        return DebertaV2Config(
            **common, relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm", conv_kernel_size=3, share_att_key=True,
            position_biased_input=False, type_vocab_size=0, **extra,
        )  # fmt: skip
    raise AssertionError(model_type)


def tiny_family(model_type: str, layers: int = 2, init: float = 0.02, seed: int = 0, **extra):
    torch.manual_seed(seed)
    config = tiny_config_of(model_type, layers, init, **extra)
    return AutoModel.from_config(config, **family_of(config).build_kwargs())


PAIRS = [
    Example("a", "a cat sat on the mat", "the cat is sitting on a mat", 1),
    Example("b", "stocks fell sharply today", "it will rain tomorrow in the hills", 0),
    Example("c", "hello", "hello there my good old friend", 1),
]


def batch_for(task_name: str, layout: str):
    return batch_for_examples(task_name, layout, PAIRS)


def batch_for_examples(task_name: str, layout: str, pairs: list[Example]):
    task = TASKS[task_name]
    examples = pairs if task.is_pair else [Example(e.id, e.text_a, None, 2) for e in pairs]
    enc = encode(examples, task, get_tokenizer("packaged"), 32, layout)
    return make_batches(enc, 8, shuffle=False, seed=0)[0]


def model_of(backbone: PreTrainedModel, **overrides) -> MultiExitBert:
    cfg = tiny_config(**overrides)
    model = MultiExitBert.from_config(
        cfg, [TASKS[t] for t in cfg.tasks], backbone=backbone,
        exit_module=build_exit_method(cfg).build_module,
    )  # fmt: skip
    return model.eval()


def own_hidden_states(backbone: PreTrainedModel, batch) -> tuple[torch.Tensor, ...]:
    """transformers' own forward pass, every layer's output (embedding output first)."""
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    if backbone.config.model_type in WITH_TOKEN_TYPES and batch.token_type_ids is not None:
        inputs["token_type_ids"] = batch.token_type_ids
    with torch.no_grad():
        return backbone.eval()(**inputs, output_hidden_states=True).hidden_states


@pytest.fixture(scope="module")
def data():
    return load_data(None, ("sst", "para", "sts"), max_train=8, max_dev=8, seed=0,
                     calib_fraction=0.0)  # fmt: skip


# ------------------------------------------------------------------ the families' layout


def test_the_six_families_have_adapters():
    assert set(FAMILIES) == set(MODEL_TYPES)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("task,layout", [("para", "packed"), ("sst", "packed")])
def test_layer_by_layer_forward_equals_the_models_own_hidden_states(model_type, task, layout):
    backbone = tiny_family(model_type, layers=3, init=0.2)
    batch = batch_for(task, layout)
    expected = own_hidden_states(backbone, batch)
    model = model_of(backbone, concat="before_embed")
    assert model.num_layers == len(expected) - 1 == 3
    with torch.no_grad():
        state = model.embed(batch)
        for i in range(model.num_layers):
            state = model.layer(i, state)
            torch.testing.assert_close(state.hidden, expected[i + 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_after_embed_gives_sentence_b_type_one_only_where_the_model_has_a_second_type(
    model_type,
):
    model = model_of(tiny_family(model_type), concat="after_embed")
    batch = batch_for("para", "separate")
    has_types = model_type in WITH_TOKEN_TYPES
    assert model.token_types == has_types
    with torch.no_grad():
        state = model.embed(batch)  # RoBERTa's one-row table: type 1 would be an IndexError
        a, b = batch.input_ids, batch.input_ids_b
        types = torch.ones_like(b) if has_types else torch.zeros_like(b)
        alone_a = model.family.embed(model.bert, a, torch.zeros_like(a), batch.attention_mask)
        alone_b = model.family.embed(model.bert, b, types, batch.attention_mask_b)
    for row in range(len(batch)):  # each row's real tokens: A's, then B's embedded alone
        real_a = alone_a[row][batch.attention_mask[row].bool()]
        real_b = alone_b[row][batch.attention_mask_b[row].bool()]
        got = state.hidden[row][state.mask[row].bool()]
        torch.testing.assert_close(got, torch.cat([real_a, real_b]), atol=1e-6, rtol=0)
    assert len(model(batch)) == model.num_layers


@pytest.mark.parametrize("layout", ["separate", "packed"])
def test_a_deberta_pair_scores_the_same_whatever_else_is_in_its_batch(layout):
    """Relative positions: A's padding must not sit between A and B (after_embed)."""
    concat = "after_embed" if layout == "separate" else "before_embed"
    model = model_of(tiny_family("deberta-v2", init=0.2), concat=concat)
    batch = batch_for("para", layout)  # pair c has the shortest A, padded in the batch
    with torch.no_grad():
        together = model(batch)[-1].logits
        alone = model(batch_for_examples("para", layout, PAIRS[2:]))[-1].logits
    torch.testing.assert_close(together[2:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_embedding_and_layer_parameters_cover_the_whole_backbone(model_type):
    model = model_of(tiny_family(model_type, layers=3))
    groups = [model.embedding_parameters()] + [model.layer_parameters(i) for i in range(3)]
    ids = [{id(p) for p in g} for g in groups]
    assert set().union(*ids) == {id(p) for p in model.bert.parameters()}
    assert all(ids) and not ids[0] & set().union(*ids[1:])
    if model_type == "albert":  # one shared group: every virtual layer names the same weights
        assert ids[1] == ids[2] == ids[3]
    else:
        assert not (ids[1] & ids[2] or ids[2] & ids[3] or ids[1] & ids[3])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_drop_top_keeps_the_bottom_layers_of_every_family(model_type):
    backbone = tiny_family(model_type, layers=3, init=0.2)
    batch = batch_for("sst", "packed")
    expected = own_hidden_states(backbone, batch)
    model = model_of(backbone, drop_top=1, strategy="joint")
    assert model.num_layers == 2 and len(model.heads["sst"]) == 2
    assert model.bert.config.num_hidden_layers == 2  # what a checkpoint saves
    with torch.no_grad():
        state = model.embed(batch)
        for i in range(2):
            state = model.layer(i, state)
        assert len(model(batch)) == 2
    torch.testing.assert_close(state.hidden, expected[2], atol=1e-5, rtol=0)


def test_albert_calls_its_shared_group_once_per_virtual_layer_each_with_its_own_exit():
    model = model_of(tiny_family("albert", layers=4), strategy="joint")
    assert len(model.bert.encoder.albert_layer_groups) == 1
    assert model.num_layers == 4 and len(model.heads["sst"]) == 4
    heads = [{id(p) for p in model.head_parameters(i)} for i in range(4)]
    assert all(not heads[i] & heads[j] for i in range(4) for j in range(i))


def test_albert_with_several_layer_groups_refuses_drop_top():
    backbone = tiny_family("albert", layers=4, num_hidden_groups=2)
    assert model_of(backbone).num_layers == 4  # runs as it is
    with pytest.raises(ConfigError, match="num_hidden_groups=2"):
        model_of(tiny_family("albert", layers=4, num_hidden_groups=2), drop_top=1)


def test_an_unsupported_model_type_is_one_line_naming_the_supported_ones():
    with pytest.raises(ConfigError) as info:
        check_model_type(GPT2Config())
    message = str(info.value)
    assert "'gpt2'" in message and "\n" not in message
    assert all(t in message for t in MODEL_TYPES)
    check_model_type(tiny_config_of("roberta"))  # a supported one passes


def test_loading_a_model_of_an_unsupported_type_names_it_and_the_supported_ones(tmp_path):
    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"^model '.*': model type 'gpt2' is not supported"):
        load_backbone(str(tmp_path), 0.1)


def test_dropout_reaches_hidden_dropouts_and_leaves_attention_dropout_as_trained():
    for model_type in MODEL_TYPES:
        model = model_of(tiny_family(model_type), dropout=0.27)
        family = model.family
        rates = {
            name: m.p for name, m in model.bert.named_modules() if isinstance(m, torch.nn.Dropout)
        }
        attention = {n for n in rates if n.endswith(family.attention_dropout)}
        assert attention and all(rates[n] != 0.27 for n in attention), model_type
        assert {rates[n] for n in rates if n not in attention} == {0.27}, model_type


# ------------------------------------------------------------------ training

# every strategy and every exit method at least once per family, SLF on (its layer slices),
# and the two other pair layouts (siamese, packed)
STRATEGY_METHODS = [
    ("final", "none", {}), ("joint", "confidence", {}), ("two_stage", "entropy", {}),
    ("alternating", "lte", {}), ("smart_alt", "patience", {}), ("joint", "qexit", {}),
    ("alternating", "berter", {}), ("joint", "confidence", {"cos_loss": "on"}),
    ("joint", "none", {"concat": "before_embed"}),
]  # fmt: skip


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("strategy,exit_method,axes", STRATEGY_METHODS)
def test_every_strategy_and_exit_method_trains_every_family(
    data, model_type, strategy, exit_method, axes
):
    cfg = tiny_config(max_train=8, slf="on", strategy=strategy, exit_method=exit_method, **axes)
    run = TrainingRun(cfg, data, backbone=tiny_family(model_type))
    before = [p.detach().clone() for p in run.model.layer_parameters(1)]
    for epoch in range(run.strategy.num_epochs):
        run.epoch = epoch
        assert math.isfinite(run.train_epoch().train_loss)
    after = run.model.layer_parameters(1)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_slf_slice_of_layer_one_moves_only_its_layer_and_head(data, model_type):
    """ALBERT: the shared group is layer 0's and layer 1's, so layer 1's slice moves it."""
    cfg = tiny_config(max_train=8, slf="on", strategy="joint", warmup_ratio=0.0)
    run = TrainingRun(cfg, data, backbone=tiny_family(model_type))
    plan = run.strategy.step(0, 2, 3)  # the last slice: layer 1
    ids = {id(p) for p in run.model.layer_parameters(1) + run.model.head_parameters(1)}
    names = {n for n, p in run.model.named_parameters() if id(p) in ids}
    assert plan.exits == (1,) and plan.trainable == frozenset(names)


def test_albert_shared_group_trains_at_the_top_layers_rate_under_layer_lr_decay(data):
    """It is the top virtual layer too; the embeddings (and the projection) decay ** L."""
    cfg = tiny_config(max_train=8, layer_lr_decay=0.5)
    run = TrainingRun(cfg, data, backbone=tiny_family("albert", layers=3))
    scales = run.model.layer_lr_scales(cfg.layer_lr_decay)
    assert {scales[id(p)] for p in run.model.layer_parameters(0)} == {1.0}
    assert {scales[id(p)] for p in run.model.embedding_parameters()} == {0.5**3}


# ------------------------------------------------------------------ early exit


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("exit_method", ["confidence", "patience"])
def test_engine_exits_where_the_post_hoc_simulation_says_on_every_family(
    data, model_type, exit_method
):
    cfg = tiny_config(strategy="joint", exit_method=exit_method, max_dev=8)
    run = TrainingRun(cfg, data, backbone=tiny_family(model_type, layers=4, init=0.5))
    assert_engine_exits_where_the_simulation_says(run)


# ------------------------------------------------------------------ SMART


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_smart_perturbs_the_embedding_output_of_every_family(model_type):
    model = model_of(tiny_family(model_type), strategy="joint", smart="all")
    cfg = tiny_config(strategy="joint", smart="all")
    batch = batch_for("para", "separate")
    outs = model(batch)
    embedded = model.embed(batch)
    noise = adversarial_noise(model, batch, outs, (0, 1), cfg, embedded)
    width = model.bert.get_input_embeddings().embedding_dim  # ALBERT, ELECTRA: 16, not 32
    assert noise.shape == embedded.hidden.shape and noise.shape[-1] == width
    loss = smart_loss(model, batch, outs, (0, 1), cfg)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    word = model.bert.get_input_embeddings().weight
    assert word.grad is not None and word.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.layer_parameters(0))


# ------------------------------------------------------------------ checkpoints


def write_sst_file(path, n=8):
    words = ["awful", "bad", "plain", "good", "superb"]
    lines = ["\tid\tsentence\tsentiment"]
    lines += [f"{i}\tid{i}\tthe film was {words[i % 5]} .\t{i % 5}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_a_checkpoint_of_every_family_loads_and_runs_inference(data, model_type, tmp_path, capsys):
    cfg = tiny_config(strategy="joint", exit_method="confidence", drop_top=1)
    run = TrainingRun(cfg, data, backbone=tiny_family(model_type, layers=3))
    run.train_epoch()
    save_model(run, tmp_path / "ckpt", {"sst": 0.0, "para": None, "sts": None})
    saved = json.loads((tmp_path / "ckpt" / "backbone" / "config.json").read_text())
    assert saved["model_type"] == model_type  # the family the checkpoint records
    _, model, _ = load_model(tmp_path / "ckpt")
    assert type(model.bert) is type(run.model.bert) and model.num_layers == 2
    run.model.eval()
    batch = batch_for("para", run.cfg.pair_layout)
    with torch.no_grad():
        for got, want in zip(model(batch), run.model(batch), strict=True):
            torch.testing.assert_close(got.logits, want.logits)
    data_file = write_sst_file(tmp_path / "sst.csv")
    assert infer_main([str(tmp_path / "ckpt"), str(data_file), "--task", "sst"]) == 0
    out = capsys.readouterr().out
    assert "8 examples" in out and "avg exit layer 1.00/2" in out

