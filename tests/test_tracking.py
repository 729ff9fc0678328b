"""``--tracking``: a sweep logged to a local MLflow store (SQLite), one run per trial."""

from pathlib import Path

import mlflow
import pytest
import ray

from berter.errors import ConfigError
from berter.sweep.cli import main as sweep_main
from berter.sweep.store import read_results
from berter.sweep.tracking import parse_tracking


def test_unknown_or_malformed_trackers_are_one_line_errors():
    with pytest.raises(ConfigError, match="give mlflow\\[=URI\\], wandb or tensorboard"):
        parse_tracking(["comet"])
    with pytest.raises(ConfigError, match="give mlflow"):
        parse_tracking(["wandb=somewhere"])


def test_mlflow_defaults_to_a_local_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_tracking(["mlflow"]) == [f"mlflow=sqlite:///{tmp_path / 'mlflow.db'}"]


def test_a_sweep_logs_one_mlflow_run_per_trial_with_params_epochs_and_status(tiny_model, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--data", "demo", "--model", tiny_model, "--max-train", "24", "--max-dev", "16",
            "--max-len", "32", "--results", str(tmp_path / "results"), "--name", "tracked",
            "--search", "lr", "--num-samples", "2", "--epochs", "2", "--scheduler", "fifo",
            "--tracking", f"mlflow={store}"]  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert sweep_main(argv) == 0
    finally:
        ray.shutdown()
    trials = read_results(Path(tmp_path / "results" / "tracked"))["trials"]
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(trials) == 2
    assert sorted(float(r.data.params["lr"]) for r in runs) == pytest.approx(sorted(trials.lr))
    for run in runs:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "dev_score")
        assert [m.step for m in history] == [1, 2]  # one point per epoch
