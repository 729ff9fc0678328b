"""Which checkpoints a trial keeps once it has ended: ``--keep-checkpoints best|last|none``.

While a trial runs, Tune keeps what a resume or a retry needs (``checkpoint_config``): its
latest checkpoint, with the optimiser state (berter.sweep.trainable's ``optimizer.pt``),
and for ``best`` also its best epoch's by (mean) dev score, whose optimiser state
:class:`KeepCheckpoints` deletes as soon as a later checkpoint replaces it as the latest
(Tune resumes and retries from the latest only). Once the trial has ended
(finished, stopped by ASHA, diverged, or errored after its retries) nothing resumes it:
``--resume`` leaves ended trials as they are and ``--retry-errored`` restarts errored ones
from scratch. So :class:`KeepCheckpoints`, a Tune callback on the driver, then deletes
every checkpoint of the trial but the one to keep (``best``: the best epoch's, as Tune
ranked it; ``last``: the latest; ``none``: nothing) and the optimiser file of the kept one,
which leaves the weights, the config, the tokenizer and the exit thresholds: what
``berter infer`` reads. Deletion goes through the trial's storage filesystem (pyarrow), so
a local directory and an ``s3://`` or ``gs://`` results root are trimmed alike.
"""

from __future__ import annotations

import sys
from typing import Any

from ray import tune

from berter.errors import first_line
from berter.sweep.trainable import OPTIMIZER_FILE

KEEP = ("best", "last", "none")
CHECKPOINT_PREFIX = "checkpoint_"  # Tune's name for a trial's checkpoint directories


def checkpoint_config(keep: str) -> tune.CheckpointConfig:
    """What Tune keeps while a trial runs (the trial asks for a checkpoint every epoch): the
    latest always (Tune never deletes it: a resume or retry reads it), and for ``best`` also
    the best epoch's by dev score; ``last`` and ``none`` keep the latest only."""
    ranked = (
        {"checkpoint_score_attribute": "dev_score", "checkpoint_score_order": "max"}
        if keep == "best"
        else {}
    )
    return tune.CheckpointConfig(
        num_to_keep=1,
        checkpoint_at_end=False,  # not a diverged trial's weights
        **ranked,
    )


def kept_checkpoint(trial: Any, keep: str) -> str | None:
    """The storage path (no scheme) of the checkpoint an ended trial keeps, from Tune's own
    bookkeeping of the trial (the one ``checkpoint_config`` ranked); None for ``none`` or a
    trial without a checkpoint."""
    if keep == "none":
        return None
    manager = trial.run_metadata.checkpoint_manager
    result = manager.best_checkpoint_result if keep == "best" else manager.latest_checkpoint_result
    return str(result.checkpoint.path).rstrip("/") if result is not None else None


def checkpoint_dirs(fs: Any, trial_path: str) -> list[str]:
    """The checkpoint directories of a trial (storage paths, no trailing slash)."""
    import pyarrow.fs as pafs

    return [
        info.path.rstrip("/")
        for info in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
        if info.type == pafs.FileType.Directory and info.base_name.startswith(CHECKPOINT_PREFIX)
    ]


def drop_optimizer(fs: Any, checkpoint_path: str) -> None:
    """Delete the optimiser files (one per seed's run) of one checkpoint."""
    import pyarrow.fs as pafs

    for item in fs.get_file_info(pafs.FileSelector(checkpoint_path, recursive=True)):
        if item.type == pafs.FileType.File and item.base_name == OPTIMIZER_FILE:
            fs.delete_file(item.path)


def trim(fs: Any, trial_path: str, keep_path: str | None) -> None:
    """Delete every checkpoint directory under ``trial_path`` but ``keep_path``, and the
    optimiser files inside that one."""
    for path in checkpoint_dirs(fs, trial_path):
        if path == keep_path:
            drop_optimizer(fs, path)
        else:
            fs.delete_dir(path)


def warn(trial: Any, exc: Exception) -> None:
    """One line on stderr: a trim that failed leaves extra checkpoints, nothing lost."""
    print(f"warning: [{trial}] cannot trim its checkpoints: {first_line(exc)}",
          file=sys.stderr, flush=True)  # fmt: skip


class KeepCheckpoints(tune.Callback):
    """Tune callback on the driver: trims an ended trial's checkpoints to what ``keep`` says
    (module docstring), and while a trial runs leaves the optimiser state in its latest
    checkpoint only. Picklable: Tune stores it with the experiment for ``--resume``."""

    def __init__(self, keep: str = "best"):
        if keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
        self.keep = keep

    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        """A new latest checkpoint: the trial's older ones (the best epoch's, under ``best``)
        are no longer what a resume or retry reads (Tune restores the latest), so they
        drop their optimiser state now. Tune calls this before it registers the new one."""
        fs, latest = trial.storage.storage_filesystem, str(checkpoint.path).rstrip("/")
        try:
            for path in checkpoint_dirs(fs, trial.storage.trial_fs_path):
                if path != latest:
                    drop_optimizer(fs, path)
        except OSError as exc:  # the store went away: trimming waits, the sweep goes on
            warn(trial, exc)

    def ended(self, trial: Any) -> None:
        storage = trial.storage
        try:
            trim(storage.storage_filesystem, storage.trial_fs_path,
                 kept_checkpoint(trial, self.keep))  # fmt: skip
        except OSError as exc:
            warn(trial, exc)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended(trial)
