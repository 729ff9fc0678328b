"""sweeps/run.py end to end on a local Ray (2 CPUs), demo data and a tiny random backbone.

Ray starts once for the module. Each sweep trains a 3-layer, 32-wide BERT on a few dozen
demo examples per task, so a trial takes about a second; Ray's actor start-up dominates.
"""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import ray
from interrupt import InterruptSweep
from kept import assert_kept

from berter.cli import main as berter_main
from berter.sweep.cli import build_parser
from berter.sweep.cli import main as sweep_main
from berter.sweep.plan import SWEEP_FILE
from berter.sweep.store import read_results

ROOT = Path(__file__).resolve().parents[1]
TRIAL_COLUMNS = [
    "trial_id", "status", "error", "variant", "preset", "smart", "cos_loss", "concat", "slf",
    "strategy", "exit_method", "lr", "batch_size", "dropout", "epochs", "optimizer",
    "weight_decay", "warmup_ratio", "smart_lambda", "smart_step", "lte_lr", "lambda_lr",
    "patience", "dev_score", "sst_acc", "para_acc", "sts_corr", "dev_score_exit",
    "avg_exit_layer", "layers_saved", "speedup_wall", "train_seconds", "epochs_done",
    "best_epoch", "checkpoint", "model", "seed", "started_at", "setup_seconds", "data_source",
    "layer_scores",
]  # fmt: skip
EPOCH_COLUMNS = ["trial_id", "epoch", "phase", "epoch_seconds", "train_loss", "dev_score"]
EXIT_COLUMNS = ["trial_id", "task", "exit_method", "threshold", "metric", "avg_exit_layer"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def journal(directory: Path) -> optuna.storages.JournalStorage:
    """The sweep's stored Optuna study, opened as a user would (optuna-dashboard reads the same)."""
    backend = optuna.storages.journal.JournalFileBackend(str(directory / "optuna.journal"))
    return optuna.storages.JournalStorage(backend)


def args(tiny_model: str, results: Path, name: str, *extra: str) -> list[str]:
    return [
        "--data", "demo", "--model", tiny_model, "--max-train", "24", "--max-dev", "16",
        "--max-len", "32", "--results", str(results), "--name", name, *extra,
    ]  # fmt: skip


def test_three_trial_sweep_writes_the_three_tables(local_ray, tiny_model, tmp_path, capsys):
    variants = "smart=off,cos=off,slf=off,strategy=joint,exit=none|entropy,concat=after"
    rc = sweep_main(
        args(tiny_model, tmp_path, "three", "--search", "lr,batch", "--variants", variants,
             "--num-samples", "3", "--epochs", "2", "--scheduler", "fifo")
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0].startswith("data: built-in demo set (not real data)")
    tables = read_results(tmp_path / "three")
    trials, epochs, exits = tables["trials"], tables["epochs"], tables["exits"]
    assert set(TRIAL_COLUMNS) <= set(trials.columns)
    assert set(EPOCH_COLUMNS) <= set(epochs.columns) and set(EXIT_COLUMNS) <= set(exits.columns)
    assert len(trials) == 3 and set(trials.status) == {"terminated"}
    # round-robin: two variants over three trials -> both run
    assert sorted(trials.exit_method) == ["entropy", "none", "none"]
    assert trials.trial_name.str.contains("strategy-joint").all()
    assert len(epochs) == 6 and trials.epochs_done.tolist() == [2, 2, 2]
    assert set(exits.trial_id) == set(trials.trial_id)
    assert trials.data_source.eq("demo").all() and trials.lr.nunique() == 3
    # started_at is when the trial's code began; its model and data set-up is timed apart
    assert (trials.setup_seconds > 0).all() and (trials.started_at < trials.updated_at).all()
    assert (tmp_path / "three" / SWEEP_FILE).exists() and (tmp_path / "three" / "ray").is_dir()
    assert "best trials by dev_score" in out and "[" in out  # progress lines and summary
    # off a terminal (captured here): one plain line per event, no live view (test_progress)
    assert "\x1b" not in out and "best so far" not in out
    events = [line for line in out.splitlines() if line.startswith("[")]
    assert len(events) == 9  # 3 trials x (2 epochs + their end)
    assert sum(" epoch 2/2 dev " in e for e in events) == 3
    assert sum(" terminated best dev " in e for e in events) == 3
    # each trial keeps its best epoch's checkpoint (--keep-checkpoints best, the default),
    # without optimiser state, and its row names it; `berter infer` runs it as it is
    assert_kept(tmp_path / "three", trials, "best")
    best = trials.sort_values("dev_score").iloc[-1]
    data = tmp_path / "sst.csv"
    data.write_text("\tid\tsentence\tsentiment\n0\ta\ta fine film .\t3\n1\tb\tdull .\t1\n")
    assert berter_main(["infer", best.checkpoint, str(data), "--task", "sst"]) == 0
    assert "2 examples" in capsys.readouterr().out
    # the Optuna study is stored beside the Parquet files, one COMPLETE trial per trial row,
    # valued at its last epoch's dev score (what Tune reports last)
    study = optuna.load_study(study_name="three", storage=journal(tmp_path / "three"))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    last = epochs.sort_values("epoch").groupby("trial_id").dev_score.last()
    assert sorted(t.value for t in done) == pytest.approx(sorted(last))
    assert sorted(t.params["lr"] for t in done) == sorted(trials.lr)


def test_resume_skips_finished_trials_and_continues_from_checkpoints(
    local_ray, tiny_model, tmp_path
):
    common = args(tiny_model, tmp_path, "resumable")
    first = sweep_main(
        [*common, "--search", "lr", "--num-samples", "3", "--epochs", "3", "--scheduler", "fifo",
         "--max-concurrent", "1"],
        callbacks=[InterruptSweep(str(tmp_path / "fired"))],
    )  # fmt: skip
    assert first == 1  # unfinished
    before = read_results(tmp_path / "resumable")
    done = before["trials"][before["trials"].status == "terminated"]
    cut = before["trials"][before["trials"].status == "running"]
    assert len(done) == 1 and len(cut) == 1
    cut_id = cut.trial_id.item()
    cut_epochs = before["epochs"][before["epochs"].trial_id == cut_id]

    assert sweep_main(["--resume", "--name", "resumable", "--results", str(tmp_path)]) == 0
    after = read_results(tmp_path / "resumable")
    trials = after["trials"].set_index("trial_id")
    assert len(trials) == 3 and trials.index.is_unique and set(trials.status) == {"terminated"}
    finished = done.set_index("trial_id").iloc[0]
    assert trials.loc[finished.name, "updated_at"] == finished.updated_at  # not re-run
    epochs = after["epochs"]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    resumed = epochs[epochs.trial_id == cut_id].set_index("epoch")
    assert list(resumed.index) == [1, 2, 3]
    for e in cut_epochs.epoch:  # epochs before the interruption were not trained again
        assert resumed.loc[e, "reported_at"] == cut_epochs.set_index("epoch").loc[e, "reported_at"]
    # --resume continued the same stored study: one study, every trial's value in it
    storage = journal(tmp_path / "resumable")
    assert optuna.get_all_study_names(storage) == ["resumable"]
    study = optuna.load_study(study_name="resumable", storage=storage)
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    last = epochs.sort_values("epoch").groupby("trial_id").dev_score.last()
    assert sorted(values) == pytest.approx(sorted(last))


# ----------------------------------------------------------------------------- user errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--search", "lr,warp"], "unknown --search name(s): warp"),
        (["--search", "lr", "--variants", "strategy=final,exit=entropy"], "matches no variant"),
        (["--search", "lr", "--data-dir", "/nonexistent/cs224n"], "python -m berter.data download"),
        (["--variants", "paper"], "--search is required"),
        (["--search", "lr", "--num-samples", "0"], "--num-samples must be >= 1"),
        (["--search", "lr", "--objective", "loss"], "--objective"),
        (["--search", "lr", "--grace-period", "0"], "--grace-period must be >= 1"),
        (["--search", "lr", "--reduction-factor", "1"], "--reduction-factor must be > 1"),
        (["--search", "lr", "--model", "/nonexistent/model"], "does not exist"),
        (["--search", "lr", "--speedup-examples", "-1"], "expected an integer >= 0, got '-1'"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    results = tmp_path / "results"
    assert sweep_main([*argv, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not results.exists()


def test_incomplete_data_dir_names_the_missing_file(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert sweep_main(["--search", "lr", "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "ids-sst-train.csv: missing file" in err and "berter.data download" in err


def test_existing_name_needs_resume_and_resume_needs_a_sweep(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / SWEEP_FILE).write_text("{}")
    base = ["--search", "lr", "--data", "demo", "--results", str(tmp_path)]
    assert sweep_main([*base, "--name", "taken"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert sweep_main(["--resume", "--name", "nope", "--results", str(tmp_path)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert (tmp_path / "taken" / SWEEP_FILE).read_text() == "{}"  # untouched


def test_command_line_script_prints_one_line_and_exits_2():
    proc = subprocess.run(
        [sys.executable, "sweeps/run.py", "--search", "nonsense"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "unknown --search name" in proc.stderr


def test_planning_a_sweep_leaves_the_modelling_code_to_the_trials(tmp_path):
    """The driver's checks run before the first trial can start; transformers' modelling code
    (seconds of CPU: modeling_utils pulls in torch._dynamo) belongs in the trial workers only.
    The check of the installed packages reads their metadata instead."""
    code = (
        "import sys; from berter.sweep.cli import build_parser; from berter.sweep.plan import make_plan\n"
        f"argv = ['--search', 'lr', '--variants', 'all', '--data', 'demo', '--results', {str(tmp_path)!r}]\n"
        "plan, data = make_plan(build_parser().parse_args(argv))\n"
        "assert plan.max_t == 2 * plan.base['epochs'], plan.max_t  # two_stage is among them\n"
        "model_code = ('transformers.modeling_utils', 'transformers.models.bert.model', 'berter.model.multi_exit')\n"
        "print(sorted(m for m in sys.modules if m.startswith(model_code)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_help_lists_every_searchable_name():
    from berter.sweep.space import SPACE

    text = build_parser().format_help()
    for p in SPACE:
        assert f"  {p.name} " in text


def test_berter_console_script_dispatches_subcommands(capsys):
    from berter.cli import main as berter

    assert berter(["sweep", "--search", "warp"]) == 2
    assert "unknown --search name" in capsys.readouterr().err
    assert berter(["teleport"]) == 2
    assert "unknown command 'teleport'" in capsys.readouterr().err
    assert berter(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {cmd} " in out for cmd in ("sweep", "infer", "data", "report"))
