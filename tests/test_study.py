"""The sweep's stored Optuna study: where it lives and what the report reads from it."""

from __future__ import annotations

import optuna
from results_fixture import synthetic_results, write_results

from berter.report.analysis import build_report
from berter.sweep import study as stored


def make_study(directory, name: str = "sweep") -> optuna.Study:
    """A study written where a sweep writes it: lr matters, dropout never varies."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(study_name=name, storage=stored.storage(str(directory)),
                            direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    s.optimize(lambda t: -abs(t.suggest_float("lr", 1e-5, 1e-3, log=True) - 1e-4)
               + 0 * t.suggest_float("dropout", 0.1, 0.1), n_trials=12)  # fmt: skip
    return s


def test_a_directory_without_a_stored_study_has_none(tmp_path):
    assert stored.load_study(tmp_path) is None


def test_the_stored_study_loads_with_its_trials(tmp_path):
    made = make_study(tmp_path)
    loaded = stored.load_study(tmp_path)
    assert loaded.study_name == "sweep"
    assert [t.value for t in loaded.trials] == [t.value for t in made.trials]


def test_the_report_ranks_the_stored_studys_parameters(tmp_path):
    root = write_results(tmp_path / "sweep", synthetic_results())
    make_study(root)
    report = build_report(root)
    assert set(report.importance) == {"lr"}  # the study's varying parameter, not the Parquet's
    assert report.importance["lr"] > 0


def test_without_a_stored_study_the_report_rebuilds_one_from_the_trials(tmp_path):
    root = write_results(tmp_path / "sweep", synthetic_results())
    report = build_report(root)
    assert "lr" in report.importance and "variant" in report.importance


def test_an_object_store_sweep_keeps_its_journal_locally_and_publishes_it(tmp_path, monkeypatch):
    uri = (tmp_path / "bucket").as_uri()
    monkeypatch.setattr(stored, "CACHE", tmp_path / "cache")
    make_study(uri)
    assert stored.local_path(uri).is_relative_to(tmp_path / "cache")
    assert stored.load_study(uri) is None  # not beside the Parquet files until published
    stored.publish(uri)
    assert len(stored.load_study(uri).trials) == 12
