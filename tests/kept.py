"""What a finished sweep must have left of its trials' checkpoints under --keep-checkpoints,
for the sweep tests of several files."""

import json
from pathlib import Path

import pandas as pd

from berter.sweep.trainable import CHECKPOINT_FILE, OPTIMIZER_FILE
from berter.sweep.tuner import disk_usage


def epoch_of(checkpoint: str) -> int:
    return int(json.loads((Path(checkpoint) / "trial.json").read_text())["epoch"])


def assert_kept(directory: Path, trials: pd.DataFrame, keep: str) -> None:
    """No optimiser state anywhere; with best or last one checkpoint per ended trial, the one
    its row names (its best epoch's or its last), the results directory little more than
    those checkpoints; with none no checkpoint at all."""
    assert not list(directory.rglob(OPTIMIZER_FILE))
    checkpoints = sorted(str(d) for d in directory.glob("ray/*/checkpoint_*"))
    if keep == "none":
        assert checkpoints == [] and trials.checkpoint.isna().all()
        assert not list(directory.rglob(CHECKPOINT_FILE))
        return
    assert sorted(trials.checkpoint) == checkpoints
    wanted = trials.best_epoch if keep == "best" else trials.epochs_done
    assert [epoch_of(c) for c in trials.checkpoint] == wanted.tolist()
    # sizes: a checkpoint is its weights (state.pt) and small inference files (config,
    # tokenizer, exit thresholds); the optimiser state would add twice the weights. The
    # rest of the directory (tables, logs, Ray's and Optuna's state) is small.
    weights = [(Path(c) / CHECKPOINT_FILE).stat().st_size for c in checkpoints]
    sizes = [disk_usage(c) for c in checkpoints]
    assert all(w > 0.75 * size for w, size in zip(weights, sizes, strict=True))
    assert disk_usage(str(directory)) < sum(sizes) + 1e6
