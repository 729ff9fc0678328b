"""Parquet results: schema, atomic writes, best-epoch summaries, the Tune callback's merging."""

import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pandas as pd
import pyarrow.parquet as pq
import pytest
from tiny import tiny_config

from berter.config import AXES
from berter.errors import DataError
from berter.sweep.store import (
    EXIT_SCHEMA,
    Store,
    pareto_front,
    read_results,
    to_table,
    trial_schema,
)
from berter.sweep.trainable import TrialSpec
from berter.sweep.writer import URI_INTERVAL, ResultsWriter, error_message, summarise_trial
from berter.variants import Variant

AXES_DEFAULT = {a: getattr(tiny_config(), a) for a in AXES}
VARIANT = Variant(AXES_DEFAULT, "Baseline")


class Trial(SimpleNamespace):
    """What the callback reads from a Tune Trial: id, config, name, error files, and Tune's
    bookkeeping of its checkpoints (none here)."""

    def __str__(self) -> str:
        return f"baseline_{self.trial_id}"


def make_trial(trial_id: str, tmp_path=None, error: Exception | None = None) -> Trial:
    pickled = None
    if error is not None:
        pickled = tmp_path / f"{trial_id}.pkl"
        pickled.write_bytes(cloudpickle.dumps(error))
    return Trial(
        trial_id=trial_id,
        config={"variant": VARIANT.name, "lr": 1e-4},
        last_result={},
        pickled_error_file=str(pickled) if pickled else None,
        error_file=None,
        get_pickled_error=lambda: None,
        run_metadata=SimpleNamespace(
            checkpoint_manager=SimpleNamespace(
                best_checkpoint_result=None, latest_checkpoint_result=None
            )
        ),
    )


def result(epoch: int, dev: float, **extra) -> dict:
    return {
        "epoch": epoch, "main_epoch": epoch, "epochs_planned": 3, "phase": "main",
        "dev_score": dev, "sst_acc": dev, "para_acc": dev, "sts_corr": dev,
        "avg_exit_layer": 3.0, "num_layers": 3, "layer_scores": [dev - 0.1, dev],
        "train_loss": 1.0 / epoch, "epoch_seconds": 1.0, "train_seconds": float(epoch),
        "diverged": False, "started_at": "2025-01-01T00:00:00+00:00", "data_source": "demo",
        "exit_table": [
            {"task": "sst", "exit_method": "none", "threshold": float(k), "metric": dev,
             "avg_exit_layer": float(k)}
            for k in (1, 2, 3)
        ],
        **extra,
    }  # fmt: skip


def writer(root) -> ResultsWriter:
    w = ResultsWriter(
        str(root),
        TrialSpec(tiny_config().to_dict(), [VARIANT]),
        "t",
        ("sst", "para", "sts"),
        echo=False,
    )
    w.setup()
    return w


def test_trial_row_has_the_best_epochs_metrics_and_whole_trial_totals(tmp_path):
    w = writer(tmp_path)
    t = make_trial("a")
    w.on_trial_start(0, [], t)
    for epoch, dev in ((1, 0.5), (2, 0.7), (3, 0.6)):
        w.on_trial_result(0, [], t, result(epoch, dev, speedup_wall=2.0 if epoch == 3 else None))
    w.on_trial_complete(0, [], t)
    tables = read_results(tmp_path)
    row = tables["trials"].iloc[0]
    assert row.status == "terminated" and row.best_epoch == 2 and row.dev_score == 0.7
    assert row.epochs_done == 3 and row.train_seconds == 3.0 and row.speedup_wall == 2.0
    assert row.lr == 1e-4 and row.batch_size == tiny_config().batch_size  # resolved config
    assert row.preset == "Baseline" and row.trial_name == "baseline_a"
    assert list(row.layer_scores) == pytest.approx([0.6, 0.7])
    assert len(tables["epochs"]) == 3
    exits = tables["exits"]
    assert set(exits.epoch) == {2} and len(exits) == 3  # the best epoch's trade-off table only


def test_status_distinguishes_stopped_early_diverged_and_error(tmp_path):
    w = writer(tmp_path)
    stopped, diverged = make_trial("s"), make_trial("d")
    w.on_trial_result(0, [], stopped, result(1, 0.5))
    w.on_trial_complete(0, [], stopped)
    w.on_trial_result(0, [], diverged, result(1, 0.2, diverged=True))
    w.on_trial_complete(0, [], diverged)
    failed = make_trial("e", tmp_path, RuntimeError("injected fault in epoch 2\n"))
    w.on_trial_start(0, [], failed)
    w.on_trial_error(0, [], failed)
    trials = read_results(tmp_path)["trials"].set_index("trial_id")
    assert trials.loc["s", "status"] == "stopped-early"  # 1 of 3 planned epochs
    assert trials.loc["d", "status"] == "diverged"
    assert trials.loc["e", "status"] == "error"
    assert trials.loc["e", "error"] == "RuntimeError: injected fault in epoch 2"


def kept_by_tune(trial: Trial, path: str) -> Trial:
    """The trial with Tune's bookkeeping keeping ``path`` as its best and latest checkpoint."""
    kept = SimpleNamespace(checkpoint=SimpleNamespace(path=path))
    trial.run_metadata.checkpoint_manager.best_checkpoint_result = kept
    trial.run_metadata.checkpoint_manager.latest_checkpoint_result = kept
    return trial


def test_a_row_names_the_checkpoint_its_trial_keeps_under_keep_checkpoints(tmp_path):
    """While a trial runs, its best epoch's (best) or latest (last) checkpoint; once it has
    ended, the one Tune kept (its ranking settles ties); nothing with keep none."""
    for keep in ("best", "last", "none"):
        root = tmp_path / keep
        w = ResultsWriter(str(root), TrialSpec(tiny_config().to_dict(), [VARIANT]), "t",
                          ("sst", "para", "sts"), echo=False, keep=keep)  # fmt: skip
        w.setup()
        t = make_trial("a")
        w.on_trial_start(0, [], t)
        for epoch, dev in ((1, 0.7), (2, 0.6)):
            w.on_trial_result(0, [], t, result(epoch, dev))
            t.last_result = {"epoch": epoch}
            w.on_checkpoint(0, [], t, SimpleNamespace(path=f"/ray/a/checkpoint_00000{epoch - 1}"))
        running = read_results(root)["trials"].checkpoint.item()
        w.on_trial_complete(0, [], kept_by_tune(t, "/ray/a/checkpoint_000009"))
        ended = read_results(root)["trials"].checkpoint.item()
        if keep == "none":
            assert pd.isna(running) and pd.isna(ended)
        else:
            assert running == {"best": "/ray/a/checkpoint_000000",
                               "last": "/ray/a/checkpoint_000001"}[keep]  # fmt: skip
            assert ended == "/ray/a/checkpoint_000009"


def test_error_message_unwraps_the_original_exception(tmp_path):
    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("ray::ImplicitFunc.train() traceback ...")
            self.cause = cause

    t = make_trial("w", tmp_path, Wrapped(ValueError("bad value")))
    assert error_message(t) == "ValueError: bad value"


def test_resumed_writer_merges_existing_rows_so_each_trial_appears_once(tmp_path):
    w = writer(tmp_path)
    done, unfinished = make_trial("a"), make_trial("b")
    for e in (1, 2, 3):
        w.on_trial_result(0, [], done, result(e, 0.5 + e / 10))
    w.on_trial_complete(0, [], done)
    w.on_trial_result(0, [], unfinished, result(1, 0.4))

    again = cloudpickle.loads(cloudpickle.dumps(w))  # Tune restores the pickled callback
    assert again.trials == {}  # rows are not carried in the pickle ...
    again.setup()  # ... but reloaded from the files
    again.on_trial_start(0, [], unfinished)
    for e in (2, 3):
        again.on_trial_result(0, [], unfinished, result(e, 0.45))
    again.on_trial_complete(0, [], unfinished)
    tables = read_results(tmp_path)
    assert sorted(tables["trials"].trial_id) == ["a", "b"]
    assert set(tables["trials"].status) == {"terminated"}
    assert tables["epochs"].groupby("trial_id").epoch.apply(list).to_dict() == {
        "a": [1, 2, 3],
        "b": [1, 2, 3],
    }
    b = tables["trials"].set_index("trial_id").loc["b"]
    assert b.best_epoch == 2 and b.dev_score == 0.45


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.write_table("trials.parquet", to_table([{"trial_id": "a"}], trial_schema()))
    replaced = []
    real_replace = os.replace

    def record(src, dst):
        replaced.append((os.path.dirname(src), os.path.dirname(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", record)
    store.write_table("trials.parquet", to_table([{"trial_id": "b"}], trial_schema()))
    assert replaced and all(a == b for a, b in replaced)  # rename within the directory

    def crash(src, dst):
        raise OSError("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.write_table("trials.parquet", to_table([{"trial_id": "c"}], trial_schema()))
    assert pq.read_table(tmp_path / "trials.parquet").column("trial_id").to_pylist() == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["trials.parquet"]


def test_schema_fixes_column_types_even_for_missing_values():
    table = to_table(
        [{"trial_id": "a", "batch_size": 16.0, "lr": "1e-4", "tasks": ("sst", "sts")}],
        trial_schema(),
    )
    assert str(table.schema.field("batch_size").type) == "int64"
    assert table.column("lr").to_pylist() == [1e-4]
    assert table.column("tasks").to_pylist() == ["sst,sts"]
    assert str(table.schema.field("layer_scores").type) == "list<item: double>"
    assert table.column("dev_score").to_pylist() == [None]
    assert str(table.schema.field("started_at").type) == "timestamp[us, tz=UTC]"
    assert EXIT_SCHEMA.names[:5] == ["trial_id", "config_id", "variant", "epoch", "task"]


def test_every_field_a_sweep_can_search_or_fix_is_a_trials_column():
    """What --search or --set can change per sweep is recorded per trial."""
    from berter.sweep.space import FIXED_ONLY, SPACE

    columns = set(trial_schema().names)
    assert {p.field for p in SPACE} | set(FIXED_ONLY) <= columns


def test_read_results_on_a_uri_and_with_nothing_written(tmp_path):
    empty = read_results(tmp_path / "nothing")
    assert all(df.empty for df in empty.values()) and "dev_score" in empty["trials"].columns
    w = writer(tmp_path)
    w.on_trial_result(0, [], make_trial("a"), result(1, 0.5))
    via_uri = read_results(f"file://{tmp_path}")
    assert via_uri["trials"].trial_id.tolist() == ["a"]
    assert pd.read_parquet(tmp_path / "trials.parquet").trial_id.tolist() == ["a"]  # plain pandas


def test_an_unreadable_results_file_is_one_data_error_naming_it(tmp_path):
    (tmp_path / "epochs.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match=r"cannot read .*epochs\.parquet"):
        read_results(tmp_path)
    with pytest.raises(DataError, match="cannot open results nosuchscheme://x"):
        read_results("nosuchscheme://x")


def test_pareto_front_keeps_ties_and_leaves_out_rows_missing_an_objective():
    df = pd.DataFrame(
        {"dev_score": [0.7, 0.7, 0.8, None], "train_seconds": [10.0, 10.0, 30.0, 1.0]},
        index=list("abcd"),
    )
    front = pareto_front(df, ["dev_score", "train_seconds"], ["max", "min"])
    assert front.index[0] == "c" and set(front.index[1:]) == {"a", "b"}  # equal: both stay


def test_summarise_prefers_the_earliest_of_tied_best_epochs_and_skips_nan():
    epochs = [
        {"epoch": 1, "dev_score": 0.6},
        {"epoch": 2, "dev_score": float("nan")},
        {"epoch": 3, "dev_score": 0.6},
    ]
    row = summarise_trial({}, epochs, ["dev_score"])
    assert row["best_epoch"] == 1 and row["epochs_done"] == 3


def test_pareto_front_keeps_only_non_dominated_trials():
    df = pd.DataFrame(
        {"dev_score": [0.7, 0.6, 0.65, 0.5], "avg_exit_layer": [6.0, 3.0, 5.0, 4.0]},
        index=list("abcd"),
    )
    front = pareto_front(df, ["dev_score", "avg_exit_layer"], ["max", "min"])
    assert list(front.index) == ["a", "c", "b"]  # d is beaten by b on both


def test_trials_written_before_a_setting_existed_read_back_at_its_default(tmp_path):
    w = writer(tmp_path)
    t = make_trial("a")
    w.on_trial_start(0, [], t)
    w.on_trial_result(0, [], t, result(1, 0.5))
    w.on_trial_complete(0, [], t)
    path = tmp_path / "trials.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["layer_lr_decay", "ema_decay"]), path)

    row = read_results(tmp_path)["trials"].iloc[0]
    assert row.layer_lr_decay == 1.0 and row.ema_decay == 0.0  # Config's defaults
    resumed = writer(tmp_path)  # a resumed sweep merges the old rows, then rewrites the file
    resumed.flush()
    assert pq.read_table(path).column("layer_lr_decay").to_pylist() == [1.0]


def test_trials_written_before_slf_embeddings_and_the_exit_module_rule_read_back_as_trained(
    tmp_path,
):
    w = writer(tmp_path)
    t = make_trial("a")
    w.on_trial_start(0, [], t)
    w.on_trial_result(0, [], t, result(1, 0.5))
    w.on_trial_complete(0, [], t)
    path = tmp_path / "trials.parquet"
    assert pq.read_table(path).column("slf_embeddings").to_pylist() == [False]  # new trials
    old = ["slf_embeddings", "exit_module_trained_only"]
    pq.write_table(pq.read_table(path).drop_columns(old), path)

    row = read_results(tmp_path)["trials"].iloc[0]
    # SLF trained the embeddings in slice 1, and exit modules saw only the trained exits
    assert bool(row.slf_embeddings) and bool(row.exit_module_trained_only)


def test_per_layer_thresholds_are_a_list_column_with_nan_for_never(tmp_path):
    w = writer(tmp_path)
    t = make_trial("a")
    w.on_trial_start(0, [], t)
    w.on_trial_result(0, [], t, result(1, 0.7, sst_layer_thresholds=[0.96, float("nan")]))
    w.on_trial_complete(0, [], t)
    tables = read_results(tmp_path)
    got = list(tables["trials"].iloc[0].sst_layer_thresholds)
    assert got[0] == 0.96 and math.isnan(got[1])
    assert tables["trials"].iloc[0].para_layer_thresholds is None  # shared or no early exit
    assert list(tables["epochs"].iloc[0].sst_layer_thresholds)[0] == 0.96


def test_the_hyperparameter_columns_are_the_config_fields_less_the_listed_exceptions():
    from berter.config import Config
    from berter.sweep.store import NOT_HYPERPARAMETERS, hyperparameter_fields

    names = [name for name, _ in hyperparameter_fields()]
    assert sorted(names) == sorted(f for f in Config.__dataclass_fields__ if f not in NOT_HYPERPARAMETERS)
    types = dict(hyperparameter_fields())
    assert (str(types["lr"]), str(types["batch_size"]), str(types["amp"])) == ("double", "int64", "bool")
    assert (str(types["max_train"]), str(types["tasks"])) == ("int64", "string")  # int | None; names


def test_a_new_exit_method_with_one_setting_reaches_trials_parquet_and_the_report(
    tmp_path, monkeypatch
):
    """A registered exit method and its Config field are all it takes: the results schema and
    the report's columns come from Config, so the setting's value is recorded per trial."""
    import dataclasses

    import berter.sweep.store as store
    import berter.sweep.trainable as trainable
    from berter.config import Config
    from berter.exits.base import EXIT_METHODS, ExitMethod
    from berter.report.analysis import build_report
    from berter.variants import check

    @dataclasses.dataclass
    class WithGap(Config):
        gap_margin: float = 0.25  # the throwaway method's setting

    monkeypatch.setitem(EXIT_METHODS, "gap_exit", ExitMethod)
    for module in (store, trainable):  # as if config.py had the field
        monkeypatch.setattr(module, "Config", WithGap)
    variant = Variant({**AXES_DEFAULT, "strategy": "joint", "exit_method": "gap_exit"})
    base = tiny_config().to_dict()
    check(WithGap.from_dict({**base, **variant.axes}))  # a valid variant, now it is registered
    w = ResultsWriter(str(tmp_path), TrialSpec(base, [variant]), "t", ("sst", "para", "sts"), echo=False)
    w.setup()
    for trial_id, gap, dev in (("a", 0.1, 0.6), ("b", 0.4, 0.7)):
        t = make_trial(trial_id)
        t.config = {"variant": variant.name, "gap_margin": gap}
        w.on_trial_start(0, [], t)
        w.on_trial_result(0, [], t, result(3, dev))
        w.on_trial_complete(0, [], t)

    trials = pd.read_parquet(tmp_path / "trials.parquet").set_index("trial_id")
    assert trials.gap_margin.to_dict() == {"a": 0.1, "b": 0.4}
    assert set(trials.exit_method) == {"gap_exit"} and set(trials.status) == {"terminated"}
    report = build_report(tmp_path)
    assert "gap_margin" in report.hyperparameters
    assert report.variant_table().iloc[0]["gap_margin"] == "0.4"  # the best trial's value


def test_an_object_store_writer_rewrites_at_most_every_interval_but_always_at_a_trial_end(tmp_path):
    now = [0.0]
    w = ResultsWriter(str(tmp_path), TrialSpec(tiny_config().to_dict(), [VARIANT]), "t",
                      ("sst", "para", "sts"), echo=False, min_interval=30.0,
                      clock=lambda: now[0])  # fmt: skip
    w.setup()
    t = make_trial("a")
    w.on_trial_start(0, [], t)  # the first write is due at once
    epochs_written = lambda: len(pd.read_parquet(tmp_path / "epochs.parquet"))  # noqa: E731
    now[0] = 10.0
    w.on_trial_result(0, [], t, result(1, 0.5))
    assert epochs_written() == 0 and w.pending  # held back: 10 s since the last rewrite
    now[0] = 29.0
    w.on_step_begin(0, [t])
    assert epochs_written() == 0
    now[0] = 31.0
    w.on_step_begin(0, [t])  # the interval has passed: the pending rows are written
    assert epochs_written() == 1 and not w.pending
    now[0] = 32.0
    w.on_trial_result(0, [], t, result(2, 0.6))
    assert epochs_written() == 1
    w.on_trial_complete(0, [], t)  # a trial's end is written whatever the interval
    assert epochs_written() == 2
    assert pd.read_parquet(tmp_path / "trials.parquet").status.tolist() == ["stopped-early"]  # 2 of 3


def test_a_local_results_directory_is_rewritten_at_every_event_and_an_object_store_throttled():
    spec = TrialSpec(tiny_config().to_dict(), [VARIANT])
    assert ResultsWriter("/tmp/r", spec, "t", ("sst",)).min_interval == 0
    assert ResultsWriter("s3://bucket/r", spec, "t", ("sst",)).min_interval == URI_INTERVAL > 0


def test_throttled_writes_stay_flat_per_trial_epoch_as_the_sweep_grows():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import store_bytes

    small = store_bytes.simulate(8, 2, 4, URI_INTERVAL)[0] / 16
    large = store_bytes.simulate(32, 2, 4, URI_INTERVAL)[0] / 64
    every = store_bytes.simulate(8, 2, 4, 0.0)[0] / 16
    assert large < 1.1 * small  # bytes per trial-epoch: flat
    assert small < every / 2  # and well below a rewrite at every event
