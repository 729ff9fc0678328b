"""Seeds end to end: a trial trains its configuration's seeds and reports their mean
(berter.sweep.seeds), the results hold one row per run, and the report's and
``berter.results``' statistics (berter.report.stats) match a computation on the Parquet rows.

The sweeps run on a local Ray (2 CPUs), demo data and a tiny random backbone, as in
tests/test_sweep_cli.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
import ray
import torch
from interrupt import InterruptSweep
from results_fixture import synthetic_results, write_results
from scipy import stats as scipy_stats
from tiny import tiny_config

from berter.checkpoint import load_model
from berter.report.analysis import build_report
from berter.results import paired_difference, read_results, summarise_seeds
from berter.sweep.cli import build_parser
from berter.sweep.cli import main as sweep_main
from berter.sweep.plan import make_plan
from berter.sweep.seeds import SEEDS_KEY, combine, run_directory, run_id
from berter.sweep.study import load_study
from berter.sweep.trainable import CHECKPOINT_FILE, Trial, TrialSpec
from berter.sweep.writer import ResultsWriter
from berter.variants import BASE_AXES, Variant

BASELINE = "smart=off,cos=off,concat=after,slf=off,strategy=final,exit=none"
JOINT = "smart=off,cos=off,concat=after,slf=off,strategy=joint,exit=none"
TWO_VARIANTS = "smart=off,cos=off,concat=after,slf=off,strategy=final|joint,exit=none"


# ----------------------------------------------------------------------------- combining
def test_combine_averages_numbers_keeps_shared_values_ors_flags_and_lists_every_seed():
    seeds = [
        {"epoch": 2, "variant": "v", "dev_score": 0.5, "train_seconds": 10.0, "diverged": False,
         "layer_scores": [0.1, 0.5], "seed": 0},
        {"epoch": 2, "variant": "v", "dev_score": 0.7, "train_seconds": 14.0, "diverged": True,
         "layer_scores": [0.2, 0.7], "seed": 1},
    ]  # fmt: skip
    result = combine(seeds)
    assert result["dev_score"] == pytest.approx(0.6) and result["train_seconds"] == 12.0
    assert (result["epoch"], result["variant"], result["diverged"]) == (2, "v", True)
    assert "layer_scores" not in result and "seed" not in result  # per seed only
    assert result[SEEDS_KEY] == seeds
    nan = combine([{"dev_score": 0.5}, {"dev_score": math.nan}])
    assert math.isnan(nan["dev_score"])  # a NaN seed never makes a configuration best


def test_one_seed_is_the_run_itself_in_results_and_checkpoints():
    only = {"dev_score": 0.5, "seed": 3}
    assert combine([only]) is only and SEEDS_KEY not in only
    assert run_id("abc", 3, 1) == "abc" and run_id("abc", 3, 2) == "abc-seed3"
    assert run_directory("s3://b/ckpt", 3, 1) == "s3://b/ckpt"
    assert run_directory("s3://b/ckpt/", 3, 2) == "s3://b/ckpt/seed3"


# ----------------------------------------------------------------------------- the trial
def seeded_trial(model: str, seeds: int, seed: int = 0) -> type[Trial]:
    """``Trial`` bound to a spec with ``seeds`` runs per configuration, without Ray."""
    variant = Variant({**BASE_AXES, "strategy": "joint", "exit_method": "confidence"})
    values = tiny_config(epochs=2, model=model, seed=seed).to_dict()
    spec = TrialSpec(values, [variant], speedup_examples=0, seeds=seeds)

    class Bound(Trial):
        def setup(self, config):
            super().setup(config, data=None, spec=spec)

    return Bound


def test_a_seeded_trial_trains_every_seed_one_epoch_per_step_and_reports_their_mean(tiny_model):
    trial = seeded_trial(tiny_model, seeds=3)({})
    first = trial.step()
    assert [r.epoch for r in trial.group.runs] == [1, 1, 1]
    per_seed = first[SEEDS_KEY]
    assert [r["seed"] for r in per_seed] == [0, 1, 2] and first["epoch"] == 1
    for key in ("dev_score", "sst_acc", "avg_exit_layer", "train_loss"):
        assert first[key] == pytest.approx(np.mean([r[key] for r in per_seed]), rel=1e-12)
    assert len({r["dev_score"] for r in per_seed}) > 1  # the seeds differ
    second = trial.step()
    assert second["done"] and second["epoch"] == 2 and trial.group.finished


def test_seed_k_of_a_configuration_trains_as_a_one_seed_trial_with_seed_k(tiny_model):
    """Training the seeds in turn leaves each as it would be alone (same data: here each run
    reads the demo set with its own seed, as a trial without the driver's data does)."""
    group = seeded_trial(tiny_model, seeds=2)({}).step()[SEEDS_KEY]
    alone = seeded_trial(tiny_model, seeds=1, seed=1)({}).step()
    assert SEEDS_KEY not in alone and alone["seed"] == 1
    assert group[1]["train_loss"] == alone["train_loss"]
    assert group[1]["dev_score"] == alone["dev_score"]


def test_a_seeded_checkpoint_holds_every_seed_and_a_restore_continues_each(tiny_model, tmp_path):
    cls = seeded_trial(tiny_model, seeds=2)
    trial = cls({})
    trial.step()
    trial.save_checkpoint(str(tmp_path))
    expected = trial.step()[SEEDS_KEY]
    for seed in (0, 1):  # each seed's directory is a complete inference checkpoint
        assert (tmp_path / f"seed{seed}" / CHECKPOINT_FILE).exists()
        cfg, model, _ = load_model(tmp_path / f"seed{seed}")
        assert cfg.seed == seed
    _, zero, _ = load_model(tmp_path / "seed0")
    _, one, _ = load_model(tmp_path / "seed1")
    assert any(not torch.equal(a, b) for a, b in zip(zero.state_dict().values(),
                                                       one.state_dict().values(), strict=True))  # fmt: skip

    resumed = cls({})
    resumed.load_checkpoint(str(tmp_path))
    assert resumed.group.epoch == 1
    result = resumed.step()[SEEDS_KEY]
    for got, want in zip(result, expected, strict=True):
        assert got["seed"] == want["seed"] and got["epoch"] == 2
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)


# ----------------------------------------------------------------------------- the writer
class FakeTrial(SimpleNamespace):
    def __str__(self) -> str:
        return f"baseline_{self.trial_id}"


def seed_result(epoch: int, devs: list[float], extra: dict[int, dict] | None = None) -> dict:
    """A seeded trial's result for one epoch: seed k's dev score ``devs[k]``, plus ``extra[k]``."""
    extra = extra or {}
    runs = [
        {"epoch": epoch, "main_epoch": epoch, "epochs_planned": 3, "phase": "main",
         "dev_score": d, "sst_acc": d, "train_loss": 1.0, "epoch_seconds": 1.0,
         "train_seconds": float(epoch), "diverged": False, "seed": k, "num_layers": 3,
         "exit_table": [{"task": "sst", "exit_method": "none", "threshold": 1.0, "metric": d,
                         "avg_exit_layer": 1.0}],
         **extra.get(k, {})}
        for k, d in enumerate(devs)
    ]  # fmt: skip
    return combine(runs)


def seeded_writer(root: Path, seeds: int = 2) -> ResultsWriter:
    spec = TrialSpec(tiny_config().to_dict(), [Variant(BASE_AXES, "Baseline")], seeds=seeds)
    w = ResultsWriter(str(root), spec, "t", ("sst", "para", "sts"), echo=False)
    w.setup()
    return w


def fake_trial(trial_id: str) -> FakeTrial:
    manager = SimpleNamespace(best_checkpoint_result=None, latest_checkpoint_result=None)
    return FakeTrial(trial_id=trial_id, config={"variant": BASELINE}, last_result={},
                     pickled_error_file=None, error_file=None, get_pickled_error=lambda: None,
                     run_metadata=SimpleNamespace(checkpoint_manager=manager))  # fmt: skip


def test_the_writer_keeps_one_row_per_run_at_the_configurations_best_mean_epoch(tmp_path):
    w = seeded_writer(tmp_path)
    t = fake_trial("c1")
    w.on_trial_start(0, [], t)
    # seed 0 peaks in epoch 1, seed 1 in epoch 3; their mean peaks in epoch 2
    for epoch, devs in ((1, [0.60, 0.30]), (2, [0.55, 0.50]), (3, [0.40, 0.55])):
        w.on_trial_result(0, [], t, seed_result(epoch, devs))
    w.on_trial_complete(0, [], t)
    tables = read_results(tmp_path)
    trials = tables["trials"].set_index("trial_id")
    assert list(trials.index) == ["c1-seed0", "c1-seed1"]
    assert set(trials.config_id) == {"c1"} and trials.seed.tolist() == [0, 1]
    assert trials.best_epoch.tolist() == [2, 2] and trials.dev_score.tolist() == [0.55, 0.50]
    assert trials.trial_name.tolist() == ["baseline_c1-seed0", "baseline_c1-seed1"]
    assert set(trials.status) == {"terminated"}
    epochs = tables["epochs"]
    assert len(epochs) == 6 and set(epochs.config_id) == {"c1"}
    assert epochs.groupby("trial_id").seed.first().to_dict() == {"c1-seed0": 0, "c1-seed1": 1}
    exits = tables["exits"]
    assert set(exits.epoch) == {2} and sorted(exits.trial_id) == ["c1-seed0", "c1-seed1"]


def test_one_diverged_seed_makes_every_run_of_its_configuration_diverged(tmp_path):
    w = seeded_writer(tmp_path)
    t = fake_trial("c1")
    w.on_trial_start(0, [], t)
    diverged = {1: {"diverged": True, "train_loss": math.nan}}
    w.on_trial_result(0, [], t, seed_result(1, [0.5, math.nan], diverged))
    w.on_trial_complete(0, [], t)
    trials = read_results(tmp_path)["trials"].set_index("trial_id")
    assert set(trials.status) == {"diverged"}
    assert trials.loc["c1-seed1", "error"] == "training loss is nan in epoch 1 (non-finite: diverged)"
    assert trials.loc["c1-seed0", "error"].startswith("seed 1 of this configuration: ")


def test_a_resumed_writer_drops_every_run_of_a_configuration_ray_does_not_know(tmp_path):
    w = seeded_writer(tmp_path)
    for tid in ("kept", "lost"):
        t = fake_trial(tid)
        w.on_trial_start(0, [], t)
        w.on_trial_result(0, [], t, seed_result(1, [0.5, 0.6]))
    again = seeded_writer(tmp_path)
    again.prune({"kept"})
    assert sorted(read_results(tmp_path)["trials"].trial_id) == ["kept-seed0", "kept-seed1"]


# ----------------------------------------------------------------------------- planning
def plan_of(tmp_path: Path, *argv: str):
    base = ["--data", "demo", "--results", str(tmp_path)]
    return make_plan(build_parser().parse_args([*base, *argv]))[0]


def test_search_none_is_a_grid_of_the_variants_run_to_the_end(tmp_path):
    plan = plan_of(tmp_path, "--search", "none", "--variants", "paper", "--seeds", "3")
    assert plan.search == [] and plan.params == [] and plan.round_robin
    assert plan.num_samples == 12 and plan.seeds == 3
    assert plan.scheduler == "fifo"  # ASHA would compare the grid's rows at different epochs
    assert not any("trials, not" in n or "get a trial" in n for n in plan.notes)
    assert plan_of(tmp_path, "--search", "none", "--scheduler", "asha").scheduler == "asha"
    assert plan_of(tmp_path, "--search", "lr").scheduler == "asha" and plan.seed == 0


def test_dry_run_of_a_seeded_grid_names_the_seeds_and_the_runs(tmp_path, capsys):
    argv = ["--data", "demo", "--search", "none", "--variants", "paper", "--seeds", "3",
            "--results", str(tmp_path), "--dry-run"]  # fmt: skip
    assert sweep_main(argv) == 0
    out = capsys.readouterr().out
    assert "trials: 12 x 3 seeds (36 training runs), search none (a grid of the variants), " in out
    assert "scheduler fifo" in out


@pytest.mark.parametrize("seeds", ["0", "-2"])
def test_seeds_below_one_are_one_line_and_exit_2(tmp_path, capsys, seeds):
    assert sweep_main(["--search", "none", "--seeds", seeds, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --seeds must be >= 1, got {seeds}\n"


# ----------------------------------------------------------------------------- statistics
def table_of(values: dict[str, list[float]], **columns) -> pd.DataFrame:
    """Finished runs: per configuration (its variant name), one dev score per seed."""
    rows = [
        {"trial_id": f"{cid}-seed{k}", "config_id": cid, "variant": cid, "preset": None,
         "seed": k, "status": "terminated", "dev_score": v, "train_seconds": 60.0,
         **{c: f(cid, k) for c, f in columns.items()}}
        for cid, devs in values.items() for k, v in enumerate(devs)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_paired_bootstrap_finds_a_known_difference_that_the_seed_noise_hides_unpaired():
    rng = np.random.default_rng(7)
    seed_effect = rng.normal(0.0, 0.05, 12)  # shared by every variant at the same seed
    base = 0.5 + seed_effect

    def wiggle() -> np.ndarray:  # per-seed noise of mean exactly 0: the true difference is known
        size = rng.uniform(0, 0.006, 6)
        return rng.permutation(np.concatenate([size, -size]))

    trials = table_of({
        "base": list(base), "better": list(base + 0.03 + wiggle()), "same": list(base + wiggle()),
    })  # fmt: skip
    diff = paired_difference(trials, baseline="base", metrics=("dev_score",)).set_index("config_id")
    better, same = diff.loc["better"], diff.loc["same"]
    assert better.dev_score_diff_low < 0.03 < better.dev_score_diff_high
    assert better.dev_score_diff_high - better.dev_score_diff_low < 0.01  # paired: narrow
    assert better.dev_score_excludes_zero and better.dev_score_diff_n == 12
    assert same.dev_score_diff_low < 0 < same.dev_score_diff_high
    assert not same.dev_score_excludes_zero
    assert diff.loc["base", "dev_score_diff"] == 0.0 and not diff.loc["base", "dev_score_excludes_zero"]
    # unpaired, the seed noise (sd 0.05) would swamp the 0.03: the t-intervals overlap
    summary = summarise_seeds(trials, metrics=("dev_score",)).set_index("config_id")
    assert summary.loc["better", "dev_score_low"] < summary.loc["base", "dev_score_high"]
    # the interval is the percentile bootstrap of the mean paired difference, seeded
    d = np.asarray(trials[trials.config_id == "better"].dev_score) - base
    means = d[np.random.default_rng(0).integers(0, 12, size=(10_000, 12))].mean(axis=1)
    assert (better.dev_score_diff_low, better.dev_score_diff_high) == tuple(
        np.percentile(means, [2.5, 97.5])
    )
    again = paired_difference(trials, baseline="base", metrics=("dev_score",))
    pd.testing.assert_frame_equal(again.set_index("config_id"), diff)


def test_differences_pair_runs_by_seed_not_by_row_order():
    trials = table_of({"base": [0.1, 0.5, 0.9], "plus": [0.2, 0.6, 1.0]})
    shuffled = trials.iloc[[5, 0, 3, 1, 4, 2]]
    diff = paired_difference(shuffled, baseline="base", metrics=("dev_score",))
    row = diff.set_index("config_id").loc["plus"]
    assert row.dev_score_diff == pytest.approx(0.1)
    assert row.dev_score_diff_low == pytest.approx(0.1) == row.dev_score_diff_high


def test_one_seed_shows_n_equals_1_and_no_interval(tmp_path):
    report = build_report(write_results(tmp_path / "paper", synthetic_results()))
    table = report.variant_table()
    for col in ("Dev Score", "SST", "Paraphrase", "STS", "Training Time", "Avg Exit Layer"):
        assert table[col].str.endswith(" (n=1)").all(), col
    diffs = report.differences_table().set_index("Variant")
    assert diffs.loc["Baseline", "Dev Score"] == "baseline"
    assert diffs.drop(index="Baseline")["Dev Score"].str.endswith(" (n=1)").all()
    assert (table.Seeds == "1").all()
    for shown in (table, diffs, report.ablation_table(), report.early_exit_table()):
        assert not shown.map(lambda c: "±" in c or "[" in c).any().any()


# ----------------------------------------------------------------------------- sweeps
@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def sweep_args(tiny_model: str, results: Path, name: str, *extra: str) -> list[str]:
    return [
        "--data", "demo", "--model", tiny_model, "--max-train", "24", "--max-dev", "16",
        "--max-len", "32", "--results", str(results), "--name", name, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def seeded_sweep(local_ray, tiny_model, tmp_path_factory) -> Path:
    """Two variants (the Baseline and joint) x 3 seeds, 2 epochs, as a grid."""
    root = tmp_path_factory.mktemp("seeded")
    argv = sweep_args(tiny_model, root, "grid", "--search", "none", "--seeds", "3",
                      "--variants", TWO_VARIANTS, "--epochs", "2")  # fmt: skip
    assert sweep_main(argv) == 0
    return root / "grid"


def test_a_three_seed_grid_writes_one_row_per_run_with_seed_and_config_id(seeded_sweep):
    tables = read_results(seeded_sweep)
    trials = tables["trials"]
    assert len(trials) == 6 and set(trials.status) == {"terminated"}
    assert trials.config_id.nunique() == 2 and set(trials.variant) == {BASELINE, JOINT}
    assert (trials.trial_id == trials.config_id + "-seed" + trials.seed.astype(str)).all()
    assert trials.groupby("config_id").seed.apply(sorted).tolist() == [[0, 1, 2]] * 2
    assert trials.groupby("config_id").best_epoch.nunique().eq(1).all()  # one epoch per config
    assert all(c.endswith(f"/seed{s}") for c, s in zip(trials.checkpoint, trials.seed, strict=True))
    for path in trials.checkpoint:
        assert Path(path, CHECKPOINT_FILE).exists()
    epochs, exits = tables["epochs"], tables["exits"]
    assert len(epochs) == 12 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert (epochs.trial_id == epochs.config_id + "-seed" + epochs.seed.astype(str)).all()
    assert set(exits.trial_id) == set(trials.trial_id)


def test_optuna_gets_one_value_per_configuration_the_mean_of_its_seeds(seeded_sweep):
    study = load_study(seeded_sweep).trials  # the sweep's stored Optuna study
    assert [t.state for t in study] == [optuna.trial.TrialState.COMPLETE] * 2
    epochs = read_results(seeded_sweep)["epochs"]
    last = epochs[epochs.epoch == 2]  # the value Tune reports last: the final epoch's mean
    for t in study:
        seeds = last[last.variant == t.params["variant"]]
        assert len(seeds) == 3
        assert t.value == pytest.approx(seeds.dev_score.mean(), rel=1e-12)


def t_interval_of(values: np.ndarray) -> tuple[float, float, float]:
    mean = values.mean()
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=mean, scale=scipy_stats.sem(values))
    return mean, low, high


def test_report_intervals_and_differences_equal_a_computation_on_the_parquet_rows(seeded_sweep):
    trials = pd.read_parquet(seeded_sweep / "trials.parquet")
    report = build_report(seeded_sweep)
    rows = report.variants.set_index("variant")
    table = report.variant_table().set_index("Best Trial")
    for variant, runs in trials.groupby("variant"):
        row = rows.loc[variant]
        assert row.n_seeds == 3
        for metric in ("dev_score", "sst_acc", "sts_corr", "train_seconds"):
            mean, low, high = t_interval_of(runs[metric].to_numpy())
            assert row[metric] == pytest.approx(mean, rel=1e-12)
            assert (row[f"{metric}_low"], row[f"{metric}_high"]) == pytest.approx((low, high), rel=1e-9)
        mean, low, high = t_interval_of(runs.dev_score.to_numpy())
        assert table.loc[row.config_id, "Dev Score"] == f"{mean:.3f} ± {(high - low) / 2:.3f}"
    # joint minus the Baseline, paired by seed, bootstrapped with the report's fixed RNG
    base = trials[trials.variant == BASELINE].set_index("seed").dev_score
    joint = trials[trials.variant == JOINT].set_index("seed").dev_score
    d = (joint - base.loc[joint.index]).to_numpy()
    means = d[np.random.default_rng(0).integers(0, 3, size=(10_000, 3))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    diff = report.differences.loc[rows.loc[JOINT].config_id]
    assert diff.dev_score_diff == pytest.approx(d.mean(), rel=1e-12)
    assert (diff.dev_score_diff_low, diff.dev_score_diff_high) == pytest.approx((low, high))
    assert report.baseline == rows.loc[BASELINE].config_id
    # berter.results gives pandas users the same numbers
    mine = summarise_seeds(read_results(seeded_sweep)["trials"]).set_index("config_id")
    for cid, row in report.configs.set_index("config_id").iterrows():
        assert mine.loc[cid, "dev_score_low"] == row.dev_score_low
    assert "± " in report.ablation_table().iloc[0]["Mean Dev"]


def test_resume_of_a_seeded_sweep_continues_every_seed_from_its_checkpoint(
    local_ray, tiny_model, tmp_path
):
    argv = sweep_args(tiny_model, tmp_path, "seeded", "--search", "none", "--seeds", "2",
                      "--variants", TWO_VARIANTS, "--epochs", "3", "--max-concurrent", "1")  # fmt: skip
    assert sweep_main(argv, callbacks=[InterruptSweep(str(tmp_path / "fired"))]) == 1
    before = read_results(tmp_path / "seeded")
    cut = before["trials"][before["trials"].status == "running"]
    assert len(cut) == 2 and cut.config_id.nunique() == 1  # both seeds of the cut trial
    cut_epochs = before["epochs"][before["epochs"].config_id == cut.config_id.iloc[0]]

    assert sweep_main(["--resume", "--name", "seeded", "--results", str(tmp_path)]) == 0
    after = read_results(tmp_path / "seeded")
    trials = after["trials"]
    assert len(trials) == 4 and trials.trial_id.is_unique and set(trials.status) == {"terminated"}
    assert sorted(trials.seed) == [0, 0, 1, 1]
    epochs = after["epochs"].set_index(["trial_id", "epoch"])
    assert epochs.index.is_unique and len(epochs) == 4 * 3
    for (rid, epoch), row in cut_epochs.set_index(["trial_id", "epoch"]).iterrows():
        assert epochs.loc[(rid, epoch), "reported_at"] == row.reported_at  # not trained again
    for rid in cut.trial_id:
        assert [e for (r, e) in epochs.index if r == rid] == [1, 2, 3]

