import pytest
import torch
from tiny import tiny_backbone, tiny_config

from berter.data.encode import encode, get_tokenizer, make_batches
from berter.errors import ConfigError
from berter.exits.rules import build_exit_method
from berter.model.multi_exit import MultiExitBert, load_backbone
from berter.tasks import TASKS, Example

PAIRS = [
    Example("a", "a cat sat on the mat", "the cat is sitting on a mat", 1),
    Example("b", "stocks fell sharply today", "it will rain tomorrow in the hills", 0),
    Example("c", "hello", "hello there my good old friend", 1),
]


def batch_for(task_name: str, layout: str):
    tok = get_tokenizer("packaged")
    task = TASKS[task_name]
    examples = PAIRS if task.is_pair else [Example(e.id, e.text_a, None, 2) for e in PAIRS]
    enc = encode(examples, task, tok, 32, layout)
    return make_batches(enc, 8, shuffle=False, seed=0)[0]


def model_for(**overrides) -> MultiExitBert:
    cfg = tiny_config(**overrides)
    tasks = [TASKS[t] for t in cfg.tasks]
    model = MultiExitBert.from_config(cfg, tasks, backbone=tiny_backbone(),
        exit_module=build_exit_method(cfg).build_module)
    return model.eval()


def test_every_exit_returns_outputs_for_every_task():
    model = model_for(strategy="joint")
    sst = model(batch_for("sst", "packed"))
    para = model(batch_for("para", "separate"))
    sts = model(batch_for("sts", "separate"))
    assert len(sst) == len(para) == len(sts) == model.num_layers == 3
    assert sst[0].logits.shape == (3, 5)
    assert para[0].logits.shape == (3,) and sts[-1].logits.shape == (3,)
    assert sst[1].pooled.shape == (3, 32)


def test_forward_with_exits_runs_only_those_heads_and_stops_after_the_deepest():
    model = model_for(strategy="joint")
    batch = batch_for("sst", "packed")
    with torch.no_grad():
        full = model(batch)
        part = model(batch, exits=(1,))
    assert len(part) == 2 and part[0] is None
    assert torch.allclose(part[1].logits, full[1].logits)


def test_layerwise_forward_equals_the_backbones_full_pass():
    model = model_for(concat="before_embed")
    batch = batch_for("para", "packed")
    with torch.no_grad():
        full = model.bert(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
        ).last_hidden_state
        state = model.embed(batch)
        for i in range(model.num_layers):
            state = model.layer(i, state)
    real = batch.attention_mask.bool()
    assert torch.allclose(state.hidden[real], full[real], atol=1e-5)


def test_after_embed_concatenates_separately_embedded_sentences():
    model = model_for(concat="after_embed")
    batch = batch_for("para", "separate")
    state = model.embed(batch)
    ta, tb = batch.input_ids.shape[1], batch.input_ids_b.shape[1]
    assert state.hidden.shape == (3, ta + tb, 32)
    assert torch.equal(state.mask, torch.cat([batch.attention_mask, batch.attention_mask_b], 1))
    # sentence B's positions restart at 0: its first token embeds like a sequence of its own
    e = model.bert.embeddings
    alone = e(input_ids=batch.input_ids_b, token_type_ids=torch.ones_like(batch.input_ids_b))
    assert torch.allclose(state.hidden[:, ta:], alone, atol=1e-6)


def test_after_embed_differs_from_before_embed_on_the_same_pair():
    torch.manual_seed(0)
    before = model_for(concat="before_embed")
    after = model_for(concat="after_embed")
    after.load_state_dict(before.state_dict())  # same weights: only the input order differs
    with torch.no_grad():
        lb = before(batch_for("para", "packed"))[-1].logits
        la = after(batch_for("para", "separate"))[-1].logits
    assert lb.shape == la.shape
    assert not torch.allclose(lb, la, atol=1e-4)


def test_siamese_pair_exit_is_the_cosine_of_mean_pooled_sentences():
    model = model_for(cos_loss="on")
    batch = batch_for("sts", "separate")
    with torch.no_grad():
        outs = model(batch)
        state = model.embed(batch)
    assert state.siamese and state.hidden.shape[0] == 6  # A rows then B rows
    u, v = outs[0].pair
    assert torch.allclose(outs[0].logits, torch.nn.functional.cosine_similarity(u, v))
    assert "sts" not in model.heads and "para" not in model.heads  # parameter-free exits


def test_select_keeps_only_the_chosen_rows_in_both_siamese_halves():
    model = model_for(cos_loss="on")
    state = model.embed(batch_for("para", "separate"))
    sub = state.select(torch.tensor([2]))
    assert sub.hidden.shape[0] == 2
    assert torch.equal(sub.hidden[0], state.hidden[2]) and torch.equal(
        sub.hidden[1], state.hidden[5]
    )


def test_dropout_field_reaches_backbone_and_heads():
    model = model_for(dropout=0.27)
    ps = {
        m.p
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Dropout) and "attention.self" not in n
    }
    assert ps == {0.27}


def test_drop_top_removes_top_layers_and_their_exits():
    model = model_for(drop_top=1, strategy="joint")
    assert model.num_layers == 2
    assert len(model.heads["sst"]) == 2
    assert len(model(batch_for("sst", "packed"))) == 2


def test_drop_top_must_leave_a_layer():
    with pytest.raises(ConfigError, match="drop_top"):
        model_for(drop_top=3)


def test_unknown_model_path_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load model"):
        load_backbone(str(tmp_path / "no-such-model"), 0.1)


@pytest.mark.integration
def test_packaged_backbone_loads_offline_as_a_six_layer_bert():
    bert = load_backbone("packaged", 0.1)
    assert bert.config.num_hidden_layers == 6 and bert.config.hidden_size == 384
