"""Sweep results as Parquet: one row per trial, per trial-epoch, and per trial x exit setting.

Files under ``results/<name>/`` (or a ``--results`` directory or s3:// / gs:// URI):

- ``trials.parquet``: one row per training run. Identity (trial_id, config_id, trial_name,
  status, error, variant, preset, the six axes), every hyperparameter of the resolved
  ``Config``, and the
  metrics **of the trial's best epoch by dev_score** (ties: the earlier epoch), so a trial
  that overfits in its last epoch still shows what it reached. Exceptions, which describe
  the whole trial: train_seconds (all epochs), epochs_done, speedup_wall (measured once,
  after the last epoch, on the final model). status is running, terminated, stopped-early
  (ASHA stopped it before its last epoch), diverged (non-finite training loss) or error.
  checkpoint is the directory of the best epoch's checkpoint (Tune keeps it, by dev_score):
  ``berter infer <checkpoint> <datafile>`` runs the trained model on new data.
  A run is one seed of one configuration: ``config_id`` is the Tune trial that trained it,
  ``seed`` its training seed. With ``--seeds 1`` (the default) a Tune trial trains one run
  and ``trial_id == config_id``; with ``--seeds N`` it trains N, whose ``trial_id`` is
  ``<config_id>-seed<seed>`` (:mod:`berter.sweep.seeds`).
- ``epochs.parquet``: one row per run per epoch with the same metric columns plus epoch,
  phase, epoch_seconds, train_loss.
- ``exits.parquet``: the post-hoc early-exit trade-off table of each run's best epoch:
  trial_id, task, exit_method, threshold, metric, avg_exit_layer.

Column types come from explicit pyarrow schemas. Every write goes to a temporary file in the
same directory and is renamed over the old file (object stores: one PUT), so a sweep killed
at any moment leaves readable files holding every finished trial. The files are rewritten by
:class:`berter.sweep.writer.ResultsWriter`, a Tune callback on the driver, as trials report
and finish (on an object store at most every 30 s between trial ends: its docstring). This
module does not import Ray, so the report can read through it.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from berter.config import AXES, Config, field_types
from berter.errors import ConfigError, DataError, first_line
from berter.objstore import check_write, filesystem, is_uri
from berter.tasks import TASKS, metric_column

F64, I64, STR, BOOL = pa.float64(), pa.int64(), pa.string(), pa.bool_()
TS = pa.timestamp("us", tz="UTC")
FLOATS = pa.list_(F64)

DEFAULT_TASKS = ("sst", "para", "sts")
# Columns every metrics table has, whatever the tasks (documented in the module docstring).
METRICS: list[tuple[str, pa.DataType]] = [
    ("dev_score", F64),
    ("sst_acc", F64),
    ("para_acc", F64),
    ("sts_corr", F64),
    ("dev_score_exit", F64),
    ("avg_exit_layer", F64),
    ("layers_saved", F64),
    ("speedup_wall", F64),
    ("speedup_wall_b32", F64),
    ("dev_score_mean_exits", F64),
    ("best_layer", I64),
    ("num_layers", I64),
    ("layer_scores", FLOATS),
]


def task_metric_fields(tasks: tuple[str, ...] | list[str]) -> list[tuple[str, pa.DataType]]:
    """Per-task columns: the metric (tasks other than sst/para/sts); at the early-exit operating
    point the metric, the average exit layer and the chosen threshold (one for all layers, or
    with exit_per_layer a list per exit layer, NaN where nothing exits); the metric per exit."""
    fields = []
    for name in tasks:
        col = metric_column(TASKS[name]) if name in TASKS else f"{name}_metric"
        if col not in {n for n, _ in METRICS}:
            fields.append((col, F64))
        fields += [
            (f"{col}_exit", F64),
            (f"{name}_exit_layer", F64),
            (f"{name}_threshold", F64),
            (f"{name}_layer_thresholds", FLOATS),
            (f"{col}_layers", FLOATS),
        ]
    return fields


# Config fields that are not hyperparameter columns of trials.parquet, and why. Every other
# Config field is one, typed by its annotation, so a new setting reaches the file unasked.
NOT_HYPERPARAMETERS = {
    **dict.fromkeys(AXES, "a variant axis: an identity column of its own"),
    "data_dir": "a path on the machine that ran the sweep; data_source names the data",
    "model": "an identity column of its own, after the metrics",
    "seed": "an identity column of its own (a run is one seed of a configuration)",
    "device": "runtime: where the trial ran, chosen per trial",
    "num_threads": "runtime: the trial's CPU share, chosen per trial",
}
# Column type per annotated type; a tuple of names is stored comma-joined.
COLUMN_TYPES: dict[type, pa.DataType] = {int: I64, float: F64, bool: BOOL, str: STR, tuple: STR}
# The order of the hyperparameter columns in files written before they came from Config, so
# that old and new files line up. Order only: a field not named here still gets its column,
# after these, in Config order.
COLUMN_ORDER = (
    "lr", "batch_size", "dropout", "epochs", "optimizer", "weight_decay", "warmup_ratio",
    "grad_clip", "ema_decay", "layer_lr_decay", "smart_lambda", "smart_step", "smart_eps",
    "smart_steps", "cos_margin", "slf_fraction", "lte_lr", "lambda_lr", "patience",
    "qexit_beta", "qexit_prior", "qexit_q", "regression_delta", "exit_distill",
    "slf_embeddings", "exit_module_trained_only", "distill_temperature", "exit_threshold", "exit_tolerance", "exit_per_layer",
    "exit_confidence", "max_len", "max_train", "max_dev", "drop_top", "task_order", "tasks",
    "task_weights", "pair_swap", "pooling", "calib_fraction", "calib_max", "cos_threshold",
    "amp", "compile",
)  # fmt: skip


def hyperparameter_fields() -> list[tuple[str, pa.DataType]]:
    """The hyperparameter columns of trials.parquet: every ``Config`` field but
    ``NOT_HYPERPARAMETERS``, with the column type of its annotation."""
    types = field_types(Config)
    names = [f.name for f in dataclasses.fields(Config) if f.name not in NOT_HYPERPARAMETERS]
    rank = {name: i for i, name in enumerate(COLUMN_ORDER)}
    names.sort(key=lambda name: rank.get(name, len(rank)))  # stable: new fields in Config order
    fields = []
    for name in names:
        kind = types[name][0]
        if kind not in COLUMN_TYPES:
            raise TypeError(
                f"Config.{name}: no column type for {kind.__name__}; "
                "add one to COLUMN_TYPES or the field to NOT_HYPERPARAMETERS"
            )
        fields.append((name, COLUMN_TYPES[kind]))
    return fields


# What every row of the three files starts with: the training run, and the configuration
# (Tune trial) it is one seed of; the same value when a configuration trains one seed.
RUN_IDENTITY: list[tuple[str, pa.DataType]] = [("trial_id", STR), ("config_id", STR)]


def _schema(fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    return pa.schema([pa.field(n, t) for n, t in fields])


def trial_schema(tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS) -> pa.Schema:
    return _schema(
        [
            *RUN_IDENTITY, ("trial_name", STR), ("status", STR), ("error", STR),
            ("variant", STR), ("preset", STR), *[(a, STR) for a in AXES],
            *hyperparameter_fields(),
            *METRICS, *task_metric_fields(tasks),
            ("train_seconds", F64), ("setup_seconds", F64), ("epochs_done", I64),
            ("epochs_planned", I64), ("best_epoch", I64), ("checkpoint", STR),
            ("model", STR), ("seed", I64), ("data_source", STR), ("sweep", STR),
            ("started_at", TS), ("updated_at", TS),
        ]
    )  # fmt: skip


def epoch_schema(tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS) -> pa.Schema:
    return _schema(
        [
            *RUN_IDENTITY, ("trial_name", STR), ("variant", STR), ("epoch", I64),
            ("phase", STR), ("epoch_seconds", F64), ("train_loss", F64), ("train_seconds", F64),
            *METRICS, *task_metric_fields(tasks), ("main_epoch", I64),
            ("diverged", BOOL), ("seed", I64), ("reported_at", TS),
        ]
    )  # fmt: skip


EXIT_SCHEMA = _schema(
    [
        *RUN_IDENTITY, ("variant", STR), ("epoch", I64), ("task", STR),
        ("exit_method", STR), ("threshold", F64), ("metric", F64), ("avg_exit_layer", F64),
        ("layers_saved", F64), ("calib_metric", F64), ("calib_avg_exit_layer", F64),
        ("seed", I64),
    ]
)  # fmt: skip

FILES = {"trials": "trials.parquet", "epochs": "epochs.parquet", "exits": "exits.parquet"}


# ----------------------------------------------------------------------------- coercion
def _coerce(value: Any, typ: pa.DataType) -> Any:
    """A Python value of the column's type, or None (missing, NaN ints, unparsable)."""
    if value is None:
        return None
    try:
        if pa.types.is_floating(typ):
            return float(value)
        if pa.types.is_integer(typ):
            f = float(value)
            return int(f) if math.isfinite(f) else None
        if pa.types.is_boolean(typ):
            return bool(value)
        if pa.types.is_string(typ):
            if isinstance(value, (list, tuple)):
                return ",".join(str(v) for v in value)
            return str(value)
        if pa.types.is_timestamp(typ):
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            if isinstance(value, pd.Timestamp):
                value = value.to_pydatetime()
            if isinstance(value, datetime) and value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value
        if pa.types.is_list(typ):
            return [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return value


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    cols = {f.name: [_coerce(r.get(f.name), f.type) for r in rows] for f in schema}
    return pa.table(cols, schema=schema)


# Settings whose Config default is not what trials written before the setting existed
# trained with: the value that reproduces the behaviour they had.
BEFORE_SETTING = {"slf_embeddings": True, "exit_module_trained_only": True}


def with_later_settings(table: pa.Table) -> pa.Table:
    """A trials table written before some setting existed, with that setting's column added
    at the value those trials trained with, in effect (its ``Config`` default unless
    ``BEFORE_SETTING`` says otherwise), so old and new trials compare (and a resumed old sweep
    keeps one column type)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)} | BEFORE_SETTING
    for name, typ in hyperparameter_fields():
        value = defaults.get(name, dataclasses.MISSING)
        if name in table.column_names or not isinstance(value, (bool, int, float, str)):
            continue
        table = table.append_column(pa.field(name, typ), pa.array([value] * len(table), typ))
    return table


def with_config_id(table: pa.Table) -> pa.Table:
    """A table written before runs were grouped into configurations, with ``config_id`` set
    to ``trial_id`` (each of its trials trained one seed: its own configuration)."""
    if "config_id" in table.column_names or "trial_id" not in table.column_names:
        return table
    return table.append_column(pa.field("config_id", STR), table.column("trial_id").cast(STR))


# ----------------------------------------------------------------------------- storage
def sweep_directory(results: str, name: str) -> str:
    """The directory of sweep ``name`` under a results root (absolute path or URI)."""
    if is_uri(results):
        return results.rstrip("/") + "/" + name
    return str(Path(results).expanduser().resolve() / name)


def check_writable(directory: str) -> None:
    """A ConfigError unless ``directory`` can be created and written (a URI: a small object
    is written there and deleted, so missing credentials or an endpoint that does not answer
    stop the sweep before any trial, within berter.objstore's timeouts)."""
    if is_uri(directory):
        check_write(directory)
        return
    probe = Path(directory)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"results directory {directory} is not writable ({probe})")


def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a URI (s3://, gs://, file://, ...) and the path inside it, its
    requests bounded in time (berter.objstore)."""
    return filesystem(uri)


class Store:
    """A results directory: a local path or a URI (s3://, gs://, file://) via pyarrow.fs.

    A URI pyarrow cannot open (unknown scheme, no credentials, bad bucket name) is a
    DataError naming it.
    """

    def __init__(self, root: str | Path):
        self.root = str(root)
        self.fs: pafs.FileSystem | None = None
        self.local: Path | None = None
        if is_uri(self.root):
            try:
                fs, path = _from_uri(self.root)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot open results {self.root}: {first_line(exc)}") from None
            if isinstance(fs, pafs.LocalFileSystem):
                self.local = Path(path)
            else:
                self.fs, self.path = fs, path.rstrip("/")
        else:
            self.local = Path(self.root).expanduser().resolve()

    def _remote(self, name: str) -> str:
        return f"{self.path}/{name}"

    def exists(self, name: str = "") -> bool:
        return self.file_type(name) != pafs.FileType.NotFound

    def file_type(self, name: str = "") -> pafs.FileType:
        """NotFound, File or Directory: what ``name`` (the root itself when empty) is."""
        if self.local is not None:
            return pafs.LocalFileSystem().get_file_info(str(self.local / name)).type
        return self.fs.get_file_info(self._remote(name) if name else self.path).type

    def write_bytes(self, name: str, data: bytes) -> int:
        """Atomic replace: temporary file in the same directory, then os.replace. Returns the
        bytes written."""
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
            tmp = self.local / f".{name}.{os.getpid()}.tmp"
            try:
                tmp.write_bytes(data)
                os.replace(tmp, self.local / name)
            finally:
                tmp.unlink(missing_ok=True)
        else:  # an object store PUT replaces the object whole
            with self.fs.open_output_stream(self._remote(name)) as f:
                f.write(data)
        return len(data)

    def read_bytes(self, name: str) -> bytes | None:
        if self.local is not None:
            path = self.local / name
            return path.read_bytes() if path.exists() else None
        if not self.exists(name):
            return None
        with self.fs.open_input_stream(self._remote(name)) as f:
            return f.readall()

    def write_table(self, name: str, table: pa.Table) -> int:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return self.write_bytes(name, buf.getvalue())

    def read_table(self, name: str, attempts: int = 3) -> pa.Table | None:
        """The table in ``name`` (None when there is none). A read that is not valid Parquet is
        tried again, up to ``attempts`` times: a reader racing a rewrite on a store without
        atomic replace (some S3-compatible servers, FUSE mounts) may see a torn file."""
        for attempt in range(attempts):
            data = self.read_bytes(name)
            if data is None:
                return None
            try:
                return pq.read_table(io.BytesIO(data))
            except pa.ArrowInvalid:
                if attempt == attempts - 1:
                    raise
        return None

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else self.root


def read_results(path: str | Path, must_exist: bool = False) -> dict[str, pd.DataFrame]:
    """The three tables of a sweep ({"trials", "epochs", "exits"}): the one reader of results,
    for the sweep, the report and the benchmarks.

    ``path`` is the sweep's results directory, local or an s3:// / gs:// / file:// URI. A
    missing table is empty, with its schema's columns; trials written before a setting
    existed read back with it at its ``Config`` default. ``must_exist`` (the report, which
    has nothing to show otherwise): a missing directory or trials.parquet is a DataError
    naming the path. Always a DataError: a URI that cannot be opened, a file that cannot be
    read as Parquet, a trials.parquet without a trial_id column.
    """
    store = Store(path)
    where = str(path).rstrip("/")
    empty = {"trials": trial_schema(), "epochs": epoch_schema(), "exits": EXIT_SCHEMA}
    out = {}
    for key, fname in FILES.items():
        try:
            table = store.read_table(fname)
            if table is None and key == "trials" and must_exist:
                _missing_trials(store, path)
        except (OSError, ValueError, pa.ArrowException) as exc:  # also permission, truncated
            raise DataError(f"cannot read {where}/{fname}: {first_line(exc)}") from None
        if table is None:
            table = empty[key].empty_table()
        if key == "trials":
            if "trial_id" not in table.column_names:
                raise DataError(f"{where}/{fname} has no trial_id column: not a sweep results file")
            table = with_later_settings(table)
        out[key] = with_config_id(table).to_pandas()
    return out


def _missing_trials(store: Store, path: str | Path) -> None:
    """Raise the DataError that says why a results directory has no trials.parquet."""
    kind = store.file_type()
    if kind == pafs.FileType.NotFound:
        raise DataError(f"results directory not found: {path}")
    if kind == pafs.FileType.File:
        raise DataError(f"{path} is a file: pass the results directory holding trials.parquet")
    raise DataError(f"no trials.parquet in {path} (has the sweep written any trial?)")


def pareto_front(trials: pd.DataFrame, objectives: list[str], modes: list[str]) -> pd.DataFrame:
    """Rows no other row matches on every objective and beats on one (each objective "max" or
    "min"), best first by the first objective; rows missing an objective are left out. The
    one Pareto front of the project: the sweep's summary and the report's time plot."""
    df = trials.dropna(subset=objectives)
    signs = np.array([1.0 if m == "max" else -1.0 for m in modes])
    vals = df[objectives].to_numpy(dtype=float) * signs  # higher is better on every column
    other, this = vals[None, :, :], vals[:, None, :]  # [i, j]: row j against row i
    dominated = ((other >= this).all(axis=2) & (other > this).any(axis=2)).any(axis=1)
    return df[~dominated].sort_values(objectives[0], ascending=modes[0] == "min")
