import json
import math

import pytest
import torch
from engine_check import assert_engine_exits_where_the_simulation_says, splitting_param
from exit_costs import TYPICAL
from tiny import tiny_config
from transformers import BertConfig, BertModel

from berter.checkpoint import load_model, load_tokenizer, run_from_checkpoint, save_model
from berter.config import Config
from berter.errors import ConfigError, DataError
from berter.exits.base import ExitContext
from berter.exits.calibration import operating_point, thresholds_from_metrics
from berter.exits.engine import measure_speedup, prepare, run_exits, sample, speed_metrics
from berter.infer import main
from berter.train.run import TrainingRun


def varied_backbone(layers: int = 3) -> BertModel:
    """A tiny random BERT whose [CLS] states differ between inputs.

    With the usual 0.02 init every input gets nearly the same [CLS] vector, so exit signals
    would differ only in the fourth decimal; a wide init spreads them out.
    """
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, initializer_range=0.5,
    )  # fmt: skip
    return BertModel(cfg, add_pooling_layer=False)


def make_run(**overrides) -> TrainingRun:
    """A tiny run whose operating points are chosen with a given cost model (never timed)."""
    cfg = tiny_config(strategy="joint", **overrides)
    return TrainingRun(cfg, backbone=varied_backbone(), exit_costs=TYPICAL)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("confidence", {}),
        ("entropy", {}),
        ("lte", {}),
        ("patience", {}),
        ("qexit", {}),
        ("berter", {}),
        ("confidence", {"cos_loss": "on"}),
        ("qexit", {"concat": "before_embed"}),
    ],
)
def test_engine_exits_where_the_post_hoc_simulation_says(name, overrides):
    assert_engine_exits_where_the_simulation_says(make_run(exit_method=name, **overrides))


@pytest.mark.parametrize("name", ["confidence", "patience"])
def test_engine_follows_a_per_layer_setting_like_the_simulation(name):
    run = make_run(exit_method=name)  # patience's signal carries state across layers
    task = run.tasks[0]
    te = run.evaluate("dev").tasks[task.name]
    ctx = ExitContext.from_model(run.model, task)
    signals = run.method.layer_signals(ctx, te.logits, te.pooled)
    param = (None, splitting_param(run.method, signals[1:]))  # nothing exits at layer 1
    simulated = run.method.exit_layers(signals, param)
    assert set(simulated.tolist()) == {1, 2}
    exits = []
    original = run.model.exit
    run.model.exit = lambda i, *a: exits.append(i) or original(i, *a)
    for batch_size in (1, 4):
        exits.clear()
        batches = prepare(run.encoded[task.name]["dev"], batch_size, "cpu")
        got = run_exits(run.model, run.method, batches, task, param)
        assert got.exit_layers.tolist() == (simulated + 1).tolist(), batch_size
        # a layer where nothing can exit skips its exit head, unless the signal has state
        assert (0 in exits) == run.method.stateful


def counting_layers(model):
    """Wrap model.layer to record how many rows each encoder-layer call computes."""
    calls = []
    original = model.layer

    def layer(i, state):
        calls.append((i, state.hidden.shape[0]))
        return original(i, state)

    model.layer = layer
    return calls


def test_batched_engine_skips_exited_rows():
    run = make_run(exit_method="confidence")
    task = run.tasks[0]  # sst
    enc = run.encoded["sst"]["dev"]
    batches = prepare(enc, len(enc), "cpu")  # one batch holding every example
    calls = counting_layers(run.model)
    te = run.evaluate("dev").tasks["sst"]
    signals = run.method.layer_signals(
        ExitContext.from_model(run.model, task), te.logits, te.pooled
    )
    param = splitting_param(run.method, signals)
    calls.clear()
    got = run_exits(run.model, run.method, batches, task, param)
    n = run.model.num_layers
    early = int((got.exit_layers == 1).sum())
    assert 0 < early < len(enc)
    assert calls[0] == (0, len(enc))
    assert calls[1] == (1, len(enc) - early)  # exited rows are not computed again
    assert sum(rows for _, rows in calls) == got.layer_rows == int(got.exit_layers.sum())
    calls.clear()
    full = run_exits(run.model, run.method, batches, task, param, full=True)
    assert [rows for _, rows in calls] == [len(enc)] * n
    assert (full.exit_layers == n).all()


def test_batch_of_one_stops_as_soon_as_the_rule_fires():
    run = make_run(exit_method="confidence")
    task = run.tasks[0]
    calls = counting_layers(run.model)
    batches = prepare(run.encoded["sst"]["dev"], 1, "cpu")
    got = run_exits(run.model, run.method, batches, task, 0.0)  # every example is confident enough
    assert (got.exit_layers == 1).all()
    assert [i for i, _ in calls] == [0] * len(batches)


def test_measure_speedup_reports_both_modes_on_the_same_examples():
    run = make_run(exit_method="confidence")
    enc = run.encoded["sst"]["dev"]
    res = measure_speedup(run.model, run.method, enc, {"sst": 0.0}, 4, max_examples=6, repeats=1)
    assert res["examples"] == 6 and res["avg_exit_layer"] == 1.0
    assert res["seconds_full"] > 0 and res["speedup"] > 0
    assert res["layers_saved"] == pytest.approx(1 - 1 / run.model.num_layers)
    assert torch.get_num_threads() >= 1


def test_speedup_times_each_batch_in_both_modes_back_to_back(monkeypatch):
    """A load change on a shared machine then hits both modes alike, not one whole pass."""
    import berter.exits.engine as engine

    run = make_run(exit_method="confidence")
    task = run.tasks[0]
    batches = prepare(run.encoded["sst"]["dev"], 4, "cpu")[:3]
    calls = []
    original = engine.exit_batch

    def recording(model, method, ctx, batch, param, full=False):
        calls.append((batches.index(batch), full))
        return original(model, method, ctx, batch, param, full)

    monkeypatch.setattr(engine, "exit_batch", recording)
    early, full = engine.interleaved(run.model, run.method, batches, task, 0.5, repeats=2)
    assert calls == [(0, False), (0, True), (1, True), (1, False), (2, False), (2, True),
                     (0, True), (0, False), (1, False), (1, True), (2, True), (2, False)]  # fmt: skip
    monkeypatch.setattr(engine, "exit_batch", original)
    alone = run_exits(run.model, run.method, batches, task, 0.5)
    assert early.exit_layers.tolist() == alone.exit_layers.tolist()
    assert (full.exit_layers == run.model.num_layers).all()


def test_timed_sample_is_seeded_random_in_split_order_with_rows_kept_together():
    run = make_run(exit_method="confidence")
    enc = run.encoded["para"]["dev"]
    rows = list(zip(enc.ids_a, enc.ids_b, enc.labels, strict=True))
    assert len({repr(r) for r in rows}) == len(rows)  # each row found by value below
    got = sample(enc, 5)
    picked = list(zip(got.ids_a, got.ids_b, got.labels, strict=True))
    assert len(got) == 5 and all(r in rows for r in picked)
    assert [rows.index(r) for r in picked] == sorted(rows.index(r) for r in picked)
    assert picked != rows[:5]  # not simply the first ones (seed 0 on 16 examples)
    assert sample(enc, 5).ids_a == got.ids_a  # the same sample every time
    assert sample(enc, 5, seed=1).ids_a != got.ids_a
    assert sample(enc, None) is enc and sample(enc, len(enc) + 3) is enc


def test_checkpoint_round_trip_gives_the_same_model_and_thresholds(tmp_path):
    run = make_run(exit_method="lte", drop_top=1)
    with torch.no_grad():
        run.model.cos_threshold.fill_(0.25)
    save_model(run, tmp_path, {"sst": 0.9, "para": None, "sts": 0.5})
    files = {p.name for p in tmp_path.iterdir()}
    assert files >= {"config.json", "model.pt", "exits.json", "backbone", "tokenizer"}
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state.keys() == run.model.state_dict().keys()
    cfg, model, thresholds = load_model(tmp_path)
    assert cfg == run.cfg
    assert thresholds == {"sst": 0.9, "para": None, "sts": 0.5}
    assert model.num_layers == run.model.num_layers == 2
    for key, value in run.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    tokenizer = load_tokenizer(tmp_path, cfg)
    assert tokenizer("a cat")["input_ids"] == run.tokenizer("a cat")["input_ids"]


def test_per_layer_thresholds_are_saved_as_lists_and_read_back(tmp_path):
    run = make_run(exit_method="confidence")
    save_model(run, tmp_path, {"sst": (0.96, None), "para": 0.9, "sts": None})
    saved = json.loads((tmp_path / "exits.json").read_text())
    assert saved["thresholds"] == {"sst": [0.96, None], "para": 0.9, "sts": None}
    assert load_model(tmp_path)[2] == {"sst": (0.96, None), "para": 0.9, "sts": None}


def test_save_model_calibrates_thresholds_by_default(tmp_path):
    run = make_run(exit_method="confidence")
    save_model(run, tmp_path)
    saved = json.loads((tmp_path / "exits.json").read_text())
    assert saved["exit_method"] == "confidence"
    assert set(saved["thresholds"]) == {"sst", "para", "sts"}
    assert saved["thresholds"]["sts"] is None  # confidence has no signal for regression


def test_run_from_checkpoint_scores_the_saved_model_on_its_own_slices(tmp_path):
    run = make_run()
    save_model(run, tmp_path, {"sst": None, "para": None, "sts": None})
    again = run_from_checkpoint(tmp_path, max_dev=8)
    assert again.cfg.max_dev == 8 and not again.model.training
    assert again.encoded["sst"]["calib"].labels == run.encoded["sst"]["calib"].labels
    full = run_from_checkpoint(tmp_path)
    assert full.evaluate("dev").dev_score == pytest.approx(run.evaluate("dev").dev_score, abs=1e-6)


def test_a_checkpoint_saved_with_a_retired_config_field_still_loads(tmp_path):
    run = make_run()
    save_model(run, tmp_path, {"sst": None, "para": None, "sts": None})
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "test_fault": None}))
    assert load_model(tmp_path)[0] == run.cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        Config.from_dict({**saved, "test_fault": None})  # a user's config may not name it


def test_load_model_of_a_missing_checkpoint_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(DataError, match="missing config.json"):
        load_model(tmp_path)


def write_sst_file(path, n=12):
    words = ["awful", "bad", "plain", "good", "superb"]
    lines = ["\tid\tsentence\tsentiment"]
    lines += [f"{i}\tid{i}\tthe film was {words[i % 5]} .\t{i % 5}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_prints_metric_exit_layer_and_speedup(tmp_path, capsys):
    run = make_run(exit_method="confidence")
    save_model(run, tmp_path / "ckpt", {"sst": 0.0, "para": None, "sts": None})
    data = write_sst_file(tmp_path / "sst.csv")
    argv = [str(tmp_path / "ckpt"), str(data), "--task", "sst", "--batch-size", "4"]
    assert main([*argv, "--max-examples", "8"]) == 0
    out = capsys.readouterr().out
    assert "8 examples" in out and "avg exit layer 1.00/3" in out and "speedup" in out
    save_model(run, tmp_path / "ckpt", {"sst": (None, 0.0), "para": None, "sts": None})
    assert main([*argv, "--max-examples", "8"]) == 0
    out = capsys.readouterr().out
    assert "threshold -/0" in out and "avg exit layer 2.00/3" in out


def test_cli_without_early_exit_reports_exactly_the_full_models_speed(tmp_path, capsys):
    run = make_run(exit_method="confidence")
    save_model(run, tmp_path / "ckpt", {"sst": None, "para": None, "sts": None})
    data = write_sst_file(tmp_path / "sst.csv")
    assert main([str(tmp_path / "ckpt"), str(data), "--task", "sst"]) == 0
    out = capsys.readouterr().out
    assert "threshold none (last layer)" in out and "avg exit layer 3.00/3" in out
    assert "speedup     : 1.00x (no early exit)" in out


@pytest.mark.parametrize(
    "argv_tail,message",
    [
        (["--task", "sst"], "does not exist"),  # missing checkpoint
    ],
)
def test_cli_bad_checkpoint_is_one_line_and_exit_2(tmp_path, capsys, argv_tail, message):
    data = write_sst_file(tmp_path / "sst.csv")
    assert main([str(tmp_path / "missing"), str(data), *argv_tail]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_cli_unreadable_data_file_is_one_line_and_exit_2(tmp_path, capsys):
    run = make_run(exit_method="confidence")
    save_model(run, tmp_path / "ckpt", {"sst": 0.9, "para": None, "sts": None})
    bad = tmp_path / "bad.csv"
    bad.write_text("id,sentence,sentiment\n1,hello,3\n")
    for path in (tmp_path / "absent.csv", bad):
        assert main([str(tmp_path / "ckpt"), str(path), "--task", "sst"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err


def test_speed_metrics_report_wall_clock_speedups_per_task_and_overall():
    run = make_run(exit_method="confidence")
    row = speed_metrics(run, {"sst": 0.0, "para": 0.0, "sts": None}, max_examples=4, repeats=1)
    for key in ("speedup_wall", "speedup_wall_b32", "sst_speedup_wall", "sts_speedup_wall_b32"):
        assert row[key] > 0, key


def test_engine_on_some_batches_returns_those_examples_in_split_order():
    run = make_run(exit_method="confidence")
    task = run.tasks[0]
    batches = prepare(run.encoded["sst"]["dev"], 4, "cpu")
    everything = run_exits(run.model, run.method, batches, task, 0.5)
    some = run_exits(run.model, run.method, batches[1:3], task, 0.5)
    positions = sorted(torch.cat([b.index for b in batches[1:3]]).tolist())
    assert some.exit_layers.tolist() == everything.exit_layers[positions].tolist()
    assert some.preds.tolist() == everything.preds[positions].tolist()


def test_cli_method_override_needs_its_module_and_a_threshold(tmp_path, capsys):
    run = make_run(exit_method="confidence")
    save_model(run, tmp_path / "ckpt", {"sst": 0.9, "para": None, "sts": None})
    argv = [str(tmp_path / "ckpt"), str(write_sst_file(tmp_path / "sst.csv")), "--task", "sst"]
    assert main([*argv, "--method", "qexit"]) == 2
    assert "needs its trained module" in capsys.readouterr().err
    assert main([*argv, "--method", "entropy"]) == 2
    assert "pass --threshold" in capsys.readouterr().err
    assert main([*argv, "--method", "entropy", "--threshold", "0.5"]) == 0
    assert "threshold 0.5" in capsys.readouterr().out
    assert main([*argv, "--method", "patience"]) == 0  # cfg.patience is its default
    assert "exit method patience, threshold 2" in capsys.readouterr().out


def test_a_per_layer_run_reports_times_and_saves_its_layer_thresholds(tmp_path):
    run = make_run(exit_method="confidence", exit_per_layer=True, exit_tolerance=0.5)
    row = operating_point(run, run.evaluate("dev"))
    row.update(speed_metrics(run, thresholds_from_metrics(row, list(run.cfg.tasks)), 4))
    layered = row["para_layer_thresholds"]
    assert len(layered) == run.model.num_layers - 1 and not all(map(math.isnan, layered))
    assert math.isnan(row["para_threshold"]) and row["sts_layer_thresholds"] is None
    assert row["speedup_wall"] > 0 and row["para_exit_layer"] < run.model.num_layers
    thresholds = thresholds_from_metrics(row, list(run.cfg.tasks))
    save_model(run, tmp_path, thresholds)
    assert load_model(tmp_path)[2] == thresholds


def test_unreadable_thresholds_in_exits_json_are_a_data_error(tmp_path):
    run = make_run(exit_method="confidence")
    save_model(run, tmp_path, {"sst": 0.9, "para": None, "sts": None})
    exits = json.loads((tmp_path / "exits.json").read_text())
    exits["thresholds"]["sst"] = ["high", None]
    (tmp_path / "exits.json").write_text(json.dumps(exits))
    with pytest.raises(DataError, match="exits.json: unreadable thresholds"):
        load_model(tmp_path)
