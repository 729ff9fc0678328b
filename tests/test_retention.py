"""--keep-checkpoints: an ended trial keeps its best checkpoint, its last or none, each without
the optimiser state; a running trial keeps what a resume needs.

The first tests trim checkpoint directories that Tune's own checkpoint bookkeeping
(``_CheckpointManager``, with the sweep's ``CheckpointConfig``) has kept; the last ones run
tiny demo sweeps on a local Ray (2 CPUs) and a 3-layer, 32-wide random BERT.
"""

from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
import ray
from interrupt import InterruptSweep
from kept import assert_kept
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune import Checkpoint

from berter.cli import main as berter_main
from berter.sweep.cli import main as sweep_main
from berter.sweep.retention import KeepCheckpoints, checkpoint_config
from berter.sweep.store import read_results
from berter.sweep.trainable import CHECKPOINT_FILE, OPTIMIZER_FILE


# ----------------------------------------------------------------------------- the callback
def tune_trial(root: Path, keep: str, scores: list[float], seeds: int = 1) -> SimpleNamespace:
    """A trial directory with one checkpoint per epoch (each seed's run with its state and
    optimiser files), each shown to the callback and then registered with Tune's checkpoint
    manager as the sweep configures it (Tune's order), which deletes what it does not keep;
    what the callback reads of a Tune Trial."""
    manager = _CheckpointManager(checkpoint_config(keep))
    storage = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), trial_fs_path=str(root))
    trial = SimpleNamespace(
        run_metadata=SimpleNamespace(checkpoint_manager=manager), storage=storage
    )
    for epoch, score in enumerate(scores, start=1):
        directory = root / f"checkpoint_{epoch - 1:06d}"
        runs = [directory / f"seed{s}" for s in range(seeds)] if seeds > 1 else [directory]
        for run in runs:
            run.mkdir(parents=True)
            (run / CHECKPOINT_FILE).write_text(f"weights of epoch {epoch}")
            (run / OPTIMIZER_FILE).write_text("moments")
        checkpoint = Checkpoint(str(directory), filesystem=pafs.LocalFileSystem())
        KeepCheckpoints(keep).on_checkpoint(0, [], trial, checkpoint)
        manager.register_checkpoint(_TrainingResult(checkpoint, {"dev_score": score}))
    return trial


def kept(root: Path) -> dict[str, list[str]]:
    """Each checkpoint directory left, with the files in it."""
    return {
        d.name: sorted(str(f.relative_to(d)) for f in d.rglob("*") if f.is_file())
        for d in sorted(root.glob("checkpoint_*"))
    }


def test_while_a_trial_runs_only_its_latest_checkpoint_keeps_the_optimiser_state(tmp_path):
    """Tune keeps the best epoch's checkpoint and the latest, and resumes from the latest."""
    tune_trial(tmp_path, "best", [0.5, 0.7, 0.6])
    assert kept(tmp_path) == {
        "checkpoint_000001": [CHECKPOINT_FILE],
        "checkpoint_000002": sorted([CHECKPOINT_FILE, OPTIMIZER_FILE]),
    }


def test_an_ended_trial_keeps_its_best_epochs_checkpoint_without_the_optimiser_file(tmp_path):
    trial = tune_trial(tmp_path, "best", [0.5, 0.7, 0.6], seeds=2)
    KeepCheckpoints("best").on_trial_complete(0, [], trial)
    assert kept(tmp_path) == {
        "checkpoint_000001": [f"seed0/{CHECKPOINT_FILE}", f"seed1/{CHECKPOINT_FILE}"]
    }


def test_keep_last_keeps_the_latest_checkpoint_even_when_an_earlier_epoch_scored_better(tmp_path):
    trial = tune_trial(tmp_path, "last", [0.5, 0.7, 0.6])
    KeepCheckpoints("last").on_trial_error(0, [], trial)  # an errored trial is trimmed too
    assert kept(tmp_path) == {"checkpoint_000002": [CHECKPOINT_FILE]}
    assert (tmp_path / "checkpoint_000002" / CHECKPOINT_FILE).read_text() == "weights of epoch 3"


def test_keep_none_leaves_no_checkpoint_of_an_ended_trial(tmp_path):
    trial = tune_trial(tmp_path, "none", [0.5, 0.7])
    (tmp_path / "result.json").write_text("{}")  # the trial's logs stay
    KeepCheckpoints("none").on_trial_complete(0, [], trial)
    assert kept(tmp_path) == {} and (tmp_path / "result.json").exists()


def test_a_checkpoint_directory_tune_no_longer_tracks_is_removed_with_the_rest(tmp_path):
    """A trial restarted from scratch (--retry-errored) starts a new bookkeeping; the
    directories of its first start are not the one to keep."""
    trial = tune_trial(tmp_path, "best", [0.4])
    stray = tmp_path / "checkpoint_000007"
    stray.mkdir()
    (stray / OPTIMIZER_FILE).write_text("moments")
    KeepCheckpoints("best").on_trial_complete(0, [], trial)
    assert kept(tmp_path) == {"checkpoint_000000": [CHECKPOINT_FILE]}


def test_an_object_store_trial_is_trimmed_through_its_storage_filesystem(tmp_path):
    """Paths as an s3:// or gs:// results root gives them: bucket-relative, on a pyarrow
    filesystem that is not the local one (here a sub-tree of a local directory)."""
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    manager = _CheckpointManager(checkpoint_config("best"))
    for epoch, score in ((1, 0.6), (2, 0.5)):
        path = f"bucket/sweep/ray/trial_a/checkpoint_{epoch - 1:06d}"
        fs.create_dir(path)
        for name in (CHECKPOINT_FILE, OPTIMIZER_FILE):
            with fs.open_output_stream(f"{path}/{name}") as out:
                out.write(b"x")
        checkpoint = Checkpoint(path, filesystem=fs)
        manager.register_checkpoint(_TrainingResult(checkpoint, {"dev_score": score}))
    storage = SimpleNamespace(storage_filesystem=fs, trial_fs_path="bucket/sweep/ray/trial_a")
    trial = SimpleNamespace(
        run_metadata=SimpleNamespace(checkpoint_manager=manager), storage=storage
    )
    KeepCheckpoints("best").on_trial_complete(0, [], trial)
    assert kept(tmp_path / "bucket/sweep/ray/trial_a") == {"checkpoint_000000": [CHECKPOINT_FILE]}


# ----------------------------------------------------------------------------- sweeps
@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def args(tiny_model: str, results: Path, name: str, *extra: str) -> list[str]:
    return [
        "--data", "demo", "--model", tiny_model, "--max-train", "24", "--max-dev", "16",
        "--max-len", "32", "--results", str(results), "--name", name, "--search", "lr",
        "--epochs", "2", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("keep", ["last", "none"])  # best, the default: test_sweep_cli
def test_a_sweep_leaves_each_ended_trial_what_keep_checkpoints_says(
    local_ray, tiny_model, tmp_path, capsys, keep
):
    # ASHA (the default) with two trials at once: one may be stopped after epoch 1
    rc = sweep_main(args(tiny_model, tmp_path, keep, "--num-samples", "3",
                         "--keep-checkpoints", keep))  # fmt: skip
    assert rc == 0, capsys.readouterr().out
    trials = read_results(tmp_path / keep)["trials"]
    assert set(trials.status) <= {"terminated", "stopped-early"} and len(trials) == 3
    assert_kept(tmp_path / keep, trials, keep)
    if keep == "last":  # `berter infer` takes a kept checkpoint as it is (best: test_sweep_cli)
        data = tmp_path / "sst.csv"
        data.write_text("\tid\tsentence\tsentiment\n0\ta\ta fine film .\t3\n1\tb\tdull .\t1\n")
        capsys.readouterr()
        assert berter_main(["infer", trials.checkpoint.iloc[0], str(data), "--task", "sst"]) == 0
        assert "2 examples" in capsys.readouterr().out


def test_keep_none_still_resumes_an_interrupted_trial_from_its_latest_checkpoint(
    local_ray, tiny_model, tmp_path
):
    common = args(tiny_model, tmp_path, "cut", "--num-samples", "2", "--scheduler", "fifo",
                  "--max-concurrent", "1", "--keep-checkpoints", "none")  # fmt: skip
    assert sweep_main(common, callbacks=[InterruptSweep(str(tmp_path / "fired"))]) == 1
    directory = tmp_path / "cut"
    before = read_results(directory)
    cut = before["trials"].set_index("trial_id").status
    (cut_id,) = cut.index[cut == "running"]
    # the running trial's latest checkpoint is whole, optimiser state included
    (latest,) = directory.glob(f"ray/*_{cut_id}/checkpoint_*")
    assert (latest / OPTIMIZER_FILE).is_file()

    assert sweep_main(["--resume", "--name", "cut", "--results", str(tmp_path)]) == 0
    after = read_results(directory)
    assert set(after["trials"].status) == {"terminated"}
    epochs = after["epochs"].set_index(["trial_id", "epoch"]).reported_at
    old = before["epochs"].set_index(["trial_id", "epoch"]).reported_at
    assert epochs[(cut_id, 1)] == old[(cut_id, 1)]  # epoch 1 was not trained again
    assert not list(directory.glob("ray/*/checkpoint_*"))
