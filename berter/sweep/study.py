"""The sweep's Optuna study, stored beside its Parquet files so users can open it.

Optuna's journal file storage keeps every trial the searcher was told about (values,
intermediate values, states, the parameters TPE proposed). The sweep's ``OptunaSearch``
writes to it under the study name = the sweep name; ``--resume`` continues the same study
(Ray restores the searcher, whose storage replays the journal); ``optuna-dashboard
results/<name>/optuna.journal`` opens it; the report reads hyperparameter importance from
it with Optuna's own functions. A journal needs a local file (appends and a file lock), so
for an ``s3://`` / ``gs://`` sweep it lives in a local cache and is copied beside the
Parquet files at the end of the sweep (``publish``).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from berter.sweep.store import Store, is_uri

STUDY_FILE = "optuna.journal"
CACHE = Path.home() / ".cache" / "berter" / "studies"  # local journals of object-store sweeps


def local_path(directory: str) -> Path:
    """Where the sweep's journal is written: beside the Parquet files, or for a URI in a local
    cache keyed by it (seeded from the stored copy, so a resumed sweep continues the study)."""
    if not is_uri(directory):
        return Path(directory) / STUDY_FILE
    path = CACHE / hashlib.sha1(directory.encode()).hexdigest()[:16] / STUDY_FILE
    if not path.exists():
        stored = Store(directory).read_bytes(STUDY_FILE)
        if stored is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(stored)
    return path


def storage(directory: str) -> JournalStorage:
    """The journal storage the sweep's searcher writes to."""
    path = local_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def publish(directory: str) -> None:
    """Copy an object-store sweep's local journal beside its Parquet files (a no-op locally)."""
    if is_uri(directory):
        path = local_path(directory)
        if path.exists():
            Store(directory).write_bytes(STUDY_FILE, path.read_bytes())


def load_study(directory: str | Path) -> optuna.Study | None:
    """The sweep's stored study (read-only use), or None when it has none (sweeps from before
    studies were stored, or a directory that is not a sweep)."""
    data = Store(str(directory)).read_bytes(STUDY_FILE)
    if not data:
        return None
    tmp = Path(tempfile.mkdtemp(prefix="berter-study-")) / STUDY_FILE
    tmp.write_bytes(data)  # a copy: reading must not take the running sweep's lock
    store = JournalStorage(JournalFileBackend(str(tmp)))
    names = optuna.get_all_study_names(store)
    if not names:
        return None
    return optuna.load_study(study_name=names[0], storage=store)
