import itertools

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_backbone, tiny_config

from berter.config import AXES, Config, variant_name
from berter.errors import ConfigError
from berter.exits import rules as exits
from berter.metrics import predict
from berter.model.losses import task_loss
from berter.model.multi_exit import mean_pool
from berter.tasks import TASKS
from berter.train.evaluate import eval_task
from berter.train.run import TrainingRun
from berter.variants import (
    PAPER_PRESETS,
    PAPER_TABLE2,
    Variant,
    all_variants,
    apply_variant,
    axis_values,
    check,
    select_variants,
    slug,
)


@pytest.fixture
def with_berter(monkeypatch):
    """The hybrid exit method registered (a stand-in if berter.exits does not have it yet)."""
    if "berter" not in exits.EXIT_METHODS:
        monkeypatch.setitem(exits.EXIT_METHODS, "berter", exits.ExitMethod)


@pytest.fixture
def without_berter(monkeypatch):
    if "berter" in exits.EXIT_METHODS:
        monkeypatch.delitem(exits.EXIT_METHODS, "berter")


# ------------------------------------------------------------------ presets


TABLE2_ORDER = [
    "Baseline",
    "Full SMART",
    "Early Exiting",
    "Full SMART + Early Exiting",
    "Conc Before Embed + Early Exit",
    "Cos Loss + Early Exiting",
    "SLF",
    "SLF + Early Exiting",
    "SLF + Conc Before Embed",
    "SLF + Smart Alt",
    "SLF + Smart Alt + Early Exit",
    "SLF + Smart Alt + Early Exit + Cos Loss",
]


def test_presets_are_the_twelve_table2_rows_in_order():
    assert list(PAPER_PRESETS) == TABLE2_ORDER
    assert list(PAPER_TABLE2) == TABLE2_ORDER
    for row in PAPER_TABLE2.values():
        assert set(row) == {"dev_score", "sst_acc", "para_acc", "sts_corr", "train_minutes"}
        assert all(0 < row[k] < 1 for k in ("dev_score", "sst_acc", "para_acc", "sts_corr"))
    assert PAPER_TABLE2["SLF + Smart Alt + Early Exit"]["dev_score"] == 0.683
    assert PAPER_TABLE2["Cos Loss + Early Exiting"]["train_minutes"] == 4 * 60 + 20


def test_each_preset_sets_exactly_the_axes_its_row_name_says():
    for name, axes in PAPER_PRESETS.items():
        assert set(axes) == set(AXES)
        early = "Early Exit" in name
        assert (axes["exit_method"] == "berter") == early, name
        assert (axes["slf"] == "on") == name.startswith("SLF"), name
        assert (axes["smart"] == "all") == ("Full SMART" in name), name
        assert (axes["cos_loss"] == "on") == ("Cos Loss" in name), name
        assert (axes["concat"] == "before_embed") == ("Conc Before Embed" in name), name
        if "Smart Alt" in name:
            assert axes["strategy"] == "smart_alt", name
        elif name.startswith("SLF"):
            assert axes["strategy"] == "joint", name  # SLF's global refinement stage
        elif early:
            assert axes["strategy"] == "alternating", name  # BERxiT's fine-tuning
        else:
            assert axes["strategy"] == "final", name


def test_rows_after_the_full_smart_experiments_use_smart_on_paraphrase_only():
    """BERTer 3.2: "we continued to employ SMART exclusively for paraphrase detection"."""
    smart = {name: axes["smart"] for name, axes in PAPER_PRESETS.items()}
    assert [smart[name] for name in TABLE2_ORDER[:4]] == ["off", "all", "off", "all"]
    assert all(smart[name] == "para" for name in TABLE2_ORDER[4:])


def test_presets_are_distinct_and_validate_once_the_hybrid_exit_is_registered(with_berter):
    assert len({tuple(a.values()) for a in PAPER_PRESETS.values()}) == 12
    chosen = select_variants("paper")
    assert [v.preset for v in chosen] == TABLE2_ORDER
    for v in chosen:
        apply_variant(Config(), v)


def test_presets_needing_the_hybrid_exit_fail_clearly_without_it(without_berter):
    with pytest.raises(ConfigError, match="preset 'Early Exiting' is not available.*berter"):
        select_variants("paper")
    assert select_variants("baseline") == [Variant(PAPER_PRESETS["Baseline"], "Baseline")]


def test_a_variants_name_and_slug_are_the_texts_of_results_and_trial_names():
    full = Variant(PAPER_PRESETS["Full SMART"], "Full SMART")
    assert full.name == "smart=all,cos=off,concat=after,slf=off,strategy=final,exit=none"
    assert full.slug == "full_smart"
    plain = Variant({**PAPER_PRESETS["Baseline"], "strategy": "joint", "exit_method": "entropy"})
    assert plain.slug == "strategy-joint_exit-entropy" and plain.preset is None
    assert Variant.from_dict(full.to_dict()) == full  # sweep.json


# ------------------------------------------------------------------ enumeration


def test_all_variants_is_every_valid_combination_of_the_registries():
    values = axis_values()
    valid = []
    for combo in itertools.product(*values.values()):
        axes = dict(zip(AXES, combo, strict=True))
        try:
            check(Config(**axes))
        except ConfigError:
            continue
        valid.append(axes)
    got = all_variants()
    assert [v.axes for v in got] == valid
    assert len(got) < len(list(itertools.product(*values.values())))  # some are rejected
    assert len({variant_name(v.axes) for v in got}) == len(got)  # stable names are unique
    assert {v.axes["strategy"] for v in got} == set(values["strategy"])


def test_a_newly_registered_exit_method_shows_up_in_the_variants(monkeypatch):
    monkeypatch.setitem(exits.EXIT_METHODS, "test_exit", exits.ExitMethod)
    got = select_variants("exit=test_exit")
    assert got and all(
        v.axes["exit_method"] == "test_exit" and v.axes["strategy"] != "final" for v in got
    )


def test_all_variants_tags_the_paper_rows(with_berter):
    tagged = [v.preset for v in all_variants() if v.preset]
    assert sorted(tagged) == sorted(PAPER_PRESETS)


# ------------------------------------------------------------------ selection


def test_select_a_preset_by_name_or_slug():
    expected = [Variant(PAPER_PRESETS["SLF + Smart Alt"], "SLF + Smart Alt")]
    for spec in ("SLF + Smart Alt", "slf + smart alt", "slf+smart_alt", "SLF+Smart-Alt"):
        assert select_variants(spec) == expected
    assert slug("Full SMART + Early Exiting") == "full_smart+early_exiting"
    assert [v.preset for v in select_variants("baseline, slf")] == ["Baseline", "SLF"]


def test_select_by_filter_with_aliases_short_values_and_alternatives():
    got = select_variants("smart=para,cos=off,concat=before,strategy=joint|alternating")
    assert got and all(
        (v.axes["smart"], v.axes["cos_loss"], v.axes["concat"]) == ("para", "off", "before_embed")
        for v in got
    )
    assert {v.axes["strategy"] for v in got} == {"joint", "alternating"}
    assert len(got) == 2 * 2 * len(axis_values()["exit_method"])  # slf x strategy x exit
    assert select_variants("exit=none,strategy=final,smart=off,cos=off,slf=off,concat=after") == [
        Variant(PAPER_PRESETS["Baseline"], "Baseline")
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("speed=fast", "unknown variant filter key 'speed'"),
        ("smart=sometimes", "unknown value 'sometimes' for variant filter key smart"),
        ("exit=nonesuch", "unknown value 'nonesuch' for variant filter key exit_method"),
        (
            "cos=on,concat=before_embed",
            "variant filter 'cos=on,concat=before_embed' matches no variant",
        ),
        ("no such preset", "unknown variant preset 'no such preset'"),
        ("", "empty variant spec"),
    ],
)
def test_bad_specs_are_config_errors_naming_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message):
        select_variants(spec)


def test_apply_variant_keeps_the_other_fields():
    cfg = apply_variant(Config(lr=2e-5, epochs=3), Variant(PAPER_PRESETS["SLF + Smart Alt"], "x"))
    assert (cfg.lr, cfg.epochs, cfg.slf, cfg.strategy) == (2e-5, 3, "on", "smart_alt")


# ------------------------------------------------------------------ conflicts


@pytest.mark.parametrize(
    ("axes", "named"),
    [
        (dict(cos_loss="on", concat="before_embed"), ("concat=before_embed", "cos_loss=on")),
        (dict(cos_loss="on", strategy="two_stage"), ("strategy=two_stage", "cos_loss=on")),
        (dict(cos_loss="on", tasks=("sst",)), ("cos_loss=on",)),
        (dict(smart="para", tasks=("sst", "sts")), ("smart=para",)),
    ],
)
def test_conflicting_axes_are_rejected_naming_the_conflict(axes, named):
    with pytest.raises(ConfigError) as err:
        check(Config(**axes))
    assert all(n in str(err.value) for n in named)


# ------------------------------------------------------------------ cosine loss (siamese)


@pytest.fixture(scope="module")
def siamese_run():
    cfg = tiny_config(cos_loss="on", strategy="joint", max_train=16, calib_fraction=0.25)
    run = TrainingRun(cfg, backbone=tiny_backbone())
    run.model.eval()
    return run


def test_cos_loss_encodes_pair_sentences_separately(siamese_run):
    enc = siamese_run.encoded
    assert enc["para"]["train"].layout == enc["sts"]["train"].layout == "separate"
    assert enc["sst"]["train"].layout == "packed"


def test_every_siamese_exit_is_the_cosine_of_separately_encoded_mean_pooled_sentences(siamese_run):
    model = siamese_run.model
    batch = next(b for b in siamese_run.epoch_batches(0) if b.task == "sts")
    with torch.no_grad():
        outs = model(batch)
        a = model.bert(batch.input_ids, batch.attention_mask, output_hidden_states=True)
        b = model.bert(batch.input_ids_b, batch.attention_mask_b, output_hidden_states=True)
    assert len(outs) == model.num_layers
    for i, out in enumerate(outs):
        u = mean_pool(a.hidden_states[i + 1], batch.attention_mask)
        v = mean_pool(b.hidden_states[i + 1], batch.attention_mask_b)
        assert torch.allclose(out.logits, F.cosine_similarity(u, v), atol=1e-5)


def test_siamese_losses_and_predictions(siamese_run):
    u, v = torch.randn(4, 8), torch.randn(4, 8)
    cos = F.cosine_similarity(u, v)
    out = type("Out", (), {"logits": cos, "pair": (u, v)})()
    para = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = torch.nn.CosineEmbeddingLoss(margin=0.3)(u, v, torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert torch.allclose(task_loss(TASKS["para"], out, para, cos_margin=0.3), expected)
    gold = torch.tensor([0.0, 2.5, 5.0, 1.0])
    assert torch.allclose(task_loss(TASKS["sts"], out, gold), F.mse_loss(5 * cos, gold))
    assert torch.equal(predict(TASKS["sts"], cos, siamese=True), (5 * cos).clamp(0, 5))
    assert torch.equal(predict(TASKS["para"], cos, siamese=True, threshold=0.2), (cos > 0.2).long())


def test_paraphrase_threshold_is_calibrated_on_training_data_and_used_on_dev(siamese_run):
    run = siamese_run
    dev = run.evaluate("dev")  # calibrates first
    calib = eval_task(run, TASKS["para"], run.encoded["para"]["calib"])

    def accuracy(cos: torch.Tensor, t: float) -> float:
        return float(((cos > t).numpy() == calib.labels).mean())

    for i, thr in enumerate(run.model.cos_threshold.tolist()):
        cands = torch.linspace(-1, 1, 41).tolist()
        assert accuracy(calib.logits[i], thr) >= max(accuracy(calib.logits[i], t) for t in cands)
        assert (dev.tasks["para"].preds[i] == (dev.tasks["para"].logits[i] > thr).numpy()).all()
