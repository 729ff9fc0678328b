"""Sweep results as Parquet: one row per trial, per trial-epoch, and per trial x exit setting.

Files under ``results/<name>/`` (or a ``--results`` directory or s3:// / gs:// URI):

- ``trials.parquet``: one row per trial. Identity (trial_id, trial_name, status, error,
  variant, preset, the six axes), every hyperparameter of the resolved ``Config``, and the
  metrics **of the trial's best epoch by dev_score** (ties: the earlier epoch), so a trial
  that overfits in its last epoch still shows what it reached. Exceptions, which describe
  the whole trial: train_seconds (all epochs), epochs_done, speedup_wall (measured once,
  after the last epoch, on the final model). status is running, terminated, stopped-early
  (ASHA stopped it before its last epoch), diverged (non-finite training loss) or error.
  checkpoint is the directory of the best epoch's checkpoint (Tune keeps it, by dev_score):
  ``berter infer <checkpoint> <datafile>`` runs the trained model on new data.
- ``epochs.parquet``: one row per trial per epoch with the same metric columns plus epoch,
  phase, epoch_seconds, train_loss.
- ``exits.parquet``: the post-hoc early-exit trade-off table of each trial's best epoch:
  trial_id, task, exit_method, threshold, metric, avg_exit_layer.

Column types come from explicit pyarrow schemas. Every write goes to a temporary file in the
same directory and is renamed over the old file (object stores: one PUT), so a sweep killed
at any moment leaves readable files holding every finished trial. The files are rewritten by
:class:`ResultsWriter`, a Tune callback on the driver, as trials report and finish; on
``--resume`` it first loads what is there and merges, so each trial appears exactly once.
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
from ray import tune

from berter.config import AXES, Config
from berter.errors import DataError, first_line
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


HYPERPARAMETERS: list[tuple[str, pa.DataType]] = [
    ("lr", F64), ("batch_size", I64), ("dropout", F64), ("epochs", I64), ("optimizer", STR),
    ("weight_decay", F64), ("warmup_ratio", F64), ("grad_clip", F64), ("ema_decay", F64),
    ("layer_lr_decay", F64), ("smart_lambda", F64), ("smart_step", F64), ("smart_eps", F64),
    ("smart_steps", I64), ("cos_margin", F64), ("slf_fraction", F64), ("lte_lr", F64),
    ("lambda_lr", F64), ("patience", I64), ("qexit_beta", F64), ("qexit_prior", F64),
    ("qexit_q", F64), ("regression_delta", F64), ("exit_distill", F64),
    ("slf_embeddings", BOOL), ("exit_module_trained_only", BOOL),
    ("distill_temperature", F64), ("exit_threshold", F64),
    ("exit_tolerance", F64), ("exit_per_layer", BOOL), ("exit_confidence", F64),
    ("max_len", I64), ("max_train", I64), ("max_dev", I64),
    ("drop_top", I64), ("task_order", STR), ("tasks", STR), ("task_weights", STR),
    ("pair_swap", BOOL), ("pooling", STR), ("calib_fraction", F64), ("calib_max", I64),
    ("cos_threshold", F64), ("amp", BOOL), ("compile", BOOL),
]  # fmt: skip


def _schema(fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    return pa.schema([pa.field(n, t) for n, t in fields])


def trial_schema(tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS) -> pa.Schema:
    return _schema(
        [
            ("trial_id", STR), ("trial_name", STR), ("status", STR), ("error", STR),
            ("variant", STR), ("preset", STR), *[(a, STR) for a in AXES],
            *HYPERPARAMETERS,
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
            ("trial_id", STR), ("trial_name", STR), ("variant", STR), ("epoch", I64),
            ("phase", STR), ("epoch_seconds", F64), ("train_loss", F64), ("train_seconds", F64),
            *METRICS, *task_metric_fields(tasks), ("main_epoch", I64),
            ("diverged", BOOL), ("reported_at", TS),
        ]
    )  # fmt: skip


EXIT_SCHEMA = _schema(
    [
        ("trial_id", STR), ("variant", STR), ("epoch", I64), ("task", STR),
        ("exit_method", STR), ("threshold", F64), ("metric", F64), ("avg_exit_layer", F64),
        ("layers_saved", F64), ("calib_metric", F64), ("calib_avg_exit_layer", F64),
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


def _pylist(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


# Settings whose Config default is not what trials written before the setting existed
# trained with: the value that reproduces the behaviour they had.
BEFORE_SETTING = {"slf_embeddings": True, "exit_module_trained_only": True}


def with_later_settings(table: pa.Table) -> pa.Table:
    """A trials table written before some setting existed, with that setting's column added
    at the value those trials trained with, in effect (its ``Config`` default unless
    ``BEFORE_SETTING`` says otherwise), so old and new trials compare (and a resumed old sweep
    keeps one column type)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)} | BEFORE_SETTING
    for name, typ in HYPERPARAMETERS:
        value = defaults.get(name, dataclasses.MISSING)
        if name in table.column_names or not isinstance(value, (bool, int, float, str)):
            continue
        table = table.append_column(pa.field(name, typ), pa.array([value] * len(table), typ))
    return table


# ----------------------------------------------------------------------------- storage
def is_uri(path: str) -> bool:
    return "://" in str(path)


def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a URI (s3://, gs://, file://, ...) and the path inside it."""
    return pafs.FileSystem.from_uri(uri)


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

    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomic replace: temporary file in the same directory, then os.replace."""
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

    def read_bytes(self, name: str) -> bytes | None:
        if self.local is not None:
            path = self.local / name
            return path.read_bytes() if path.exists() else None
        if not self.exists(name):
            return None
        with self.fs.open_input_stream(self._remote(name)) as f:
            return f.readall()

    def write_table(self, name: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(name, buf.getvalue())

    def read_table(self, name: str) -> pa.Table | None:
        data = self.read_bytes(name)
        return pq.read_table(io.BytesIO(data)) if data is not None else None

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
        out[key] = table.to_pandas()
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


# ----------------------------------------------------------------------------- summaries
def best_epoch_row(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the highest finite dev_score (earliest on ties); else the last epoch."""
    scored = [e for e in epochs if e.get("dev_score") is not None and math.isfinite(e["dev_score"])]
    if not scored:
        return max(epochs, key=lambda e: e["epoch"])
    return max(scored, key=lambda e: (e["dev_score"], -e["epoch"]))


def summarise(
    trial_row: dict[str, Any], epochs: list[dict[str, Any]], metric_cols: list[str]
) -> dict[str, Any]:
    """The trial row with the best epoch's metrics and the whole-trial totals filled in."""
    row = dict(trial_row)
    if not epochs:
        return row
    epochs = sorted(epochs, key=lambda e: e["epoch"])
    best = best_epoch_row(epochs)
    for col in metric_cols:
        if not col.startswith("speedup_wall"):
            row[col] = best.get(col)
    last = epochs[-1]
    row["best_epoch"] = best["epoch"]
    row["epochs_done"] = last["epoch"]
    row["train_seconds"] = last.get("train_seconds")
    for col in ("speedup_wall", "speedup_wall_b32"):  # measured once, after the last epoch
        measured = [e[col] for e in epochs if e.get(col) is not None]
        row[col] = measured[-1] if measured else None
    return row


# ----------------------------------------------------------------------------- callback
class ResultsWriter(tune.Callback):
    """Tune callback on the driver: keeps the three tables current as trials report.

    Picklable on purpose (Ray stores it with the experiment and gives it back on resume);
    its rows are (re)loaded from the results directory in :meth:`setup`.
    """

    def __init__(
        self,
        root: str,
        sweep: Any,
        name: str,
        tasks: list[str] | tuple[str, ...],
        echo: bool = True,
    ):
        self.root = str(root)
        self.sweep = sweep
        self.name = name
        self.echo = echo
        self.trial_schema = trial_schema(tasks)
        self.epoch_schema = epoch_schema(tasks)
        self.metric_cols = [n for n, _ in METRICS + task_metric_fields(tasks)]
        self._reset()

    def _reset(self) -> None:
        self.trials: dict[str, dict[str, Any]] = {}
        self.epochs: dict[tuple[str, int], dict[str, Any]] = {}
        self.exits: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.checkpoints: dict[tuple[str, int], str] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.pruned = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # the files are the state
        state.update(trials={}, epochs={}, exits={}, checkpoints={}, last={})
        return state

    # -- loading
    def setup(self, **info: Any) -> None:
        self.load()

    def load(self) -> None:
        """Start from the rows already in the results directory (a resumed sweep)."""
        self._reset()
        store = Store(self.root)
        trials = store.read_table(FILES["trials"]) or self.trial_schema.empty_table()
        for row in _pylist(with_later_settings(trials)):
            self.trials[row["trial_id"]] = row
        for row in _pylist(store.read_table(FILES["epochs"]) or self.epoch_schema.empty_table()):
            self.epochs[(row["trial_id"], row["epoch"])] = row
        for row in _pylist(store.read_table(FILES["exits"]) or EXIT_SCHEMA.empty_table()):
            self.exits.setdefault((row["trial_id"], row["epoch"]), []).append(row)

    def prune(self, known: set[str]) -> None:
        """Drop rows of trials the restored experiment does not know: a driver killed before
        Ray's next experiment snapshot leaves rows of trials that started after the last one;
        the searcher replaces those trials, so each planned trial appears exactly once."""
        self.pruned = True
        lost = set(self.trials) - known
        if not lost:
            return
        self.trials = {k: v for k, v in self.trials.items() if k not in lost}
        self.epochs = {k: v for k, v in self.epochs.items() if k[0] not in lost}
        self.exits = {k: v for k, v in self.exits.items() if k[0] not in lost}
        self.flush()
        self._say(
            f"resume: dropped {len(lost)} trial(s) that started after Ray's last experiment "
            "snapshot; new trials replace them"
        )

    # -- rows
    def _base_row(self, trial: Any) -> dict[str, Any]:
        trial_id = trial.trial_id
        row = self.trials.get(trial_id, {})
        if not row:
            row = {"trial_id": trial_id, "sweep": self.name}
            values = {**self.sweep.base, **dict(trial.config)}
            try:
                variant = self.sweep.variant_of(trial.config)
                values.update(variant.axes)
                row.update(variant=variant.name, preset=variant.preset)
                values = self.sweep.resolve(trial.config).to_dict()
            except Exception:  # an invalid trial config still gets a row, with what it has
                pass
            for field in self.trial_schema:
                if field.name in values and field.name not in row:
                    row[field.name] = values[field.name]
            row["model"] = values.get("model")
            row["seed"] = values.get("seed")
        row["trial_name"] = str(trial)
        self.trials[trial_id] = row
        return row

    def _epochs_of(self, trial_id: str) -> list[dict[str, Any]]:
        return [r for (t, _), r in self.epochs.items() if t == trial_id]

    def _refresh(self, trial_id: str) -> None:
        row = self.trials[trial_id]
        row.update(summarise(row, self._epochs_of(trial_id), self.metric_cols))
        path = self.checkpoints.get((trial_id, row.get("best_epoch")))
        if path is not None:  # else keep what a resumed sweep's file had
            row["checkpoint"] = path
        row["updated_at"] = datetime.now(timezone.utc)

    def flush(self) -> None:
        """Rewrite the three files (each atomically)."""
        store = Store(self.root)
        trials = sorted(self.trials.values(), key=lambda r: r["trial_id"])
        epochs = sorted(self.epochs.values(), key=lambda r: (r["trial_id"], r["epoch"]))
        exits = []
        for row in trials:
            best = row.get("best_epoch")
            exits.extend(self.exits.get((row["trial_id"], best), []) if best is not None else [])
        store.write_table(FILES["trials"], to_table(trials, self.trial_schema))
        store.write_table(FILES["epochs"], to_table(epochs, self.epoch_schema))
        store.write_table(FILES["exits"], to_table(exits, EXIT_SCHEMA))

    def _say(self, msg: str) -> None:
        if self.echo:
            print(msg, flush=True)

    # -- Tune hooks
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.pruned:  # the first step: ``trials`` are exactly the restored ones
            self.prune({t.trial_id for t in trials})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._base_row(trial)
        row["status"] = "running"
        row["error"] = None
        self.flush()

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if "epoch" not in result:
            return
        row = self._base_row(trial)
        row["status"] = "running"
        for key in ("started_at", "setup_seconds", "data_source", "model", "seed", "preset",
                    "epochs_planned"):  # fmt: skip
            if result.get(key) is not None:
                row[key] = result[key]
        epoch = int(result["epoch"])
        erow = {k: result.get(k) for k in self.epoch_schema.names}
        erow.update(trial_id=trial.trial_id, trial_name=str(trial), variant=row.get("variant"))
        erow["reported_at"] = datetime.now(timezone.utc)
        self.epochs[(trial.trial_id, epoch)] = erow
        self.exits[(trial.trial_id, epoch)] = [
            {**x, "trial_id": trial.trial_id, "variant": row.get("variant"), "epoch": epoch}
            for x in result.get("exit_table") or []
        ]
        self.last[trial.trial_id] = result
        self._refresh(trial.trial_id)
        self.flush()
        exit_layer = result.get("avg_exit_layer")
        layers = result.get("num_layers")
        exit_txt = f" exit layer {exit_layer:.2f}/{layers}" if exit_layer is not None else ""
        self._say(
            f"[{trial}] epoch {epoch}/{result.get('epochs_planned')} "
            f"dev {result.get('dev_score', float('nan')):.4f}{exit_txt} "
            f"({result.get('epoch_seconds', 0.0):.1f}s)"
            + (" DIVERGED" if result.get("diverged") else "")
        )

    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        """Note where the epoch just reported was saved (Tune reports, then saves)."""
        epoch = (trial.last_result or {}).get("epoch")
        if epoch is None or trial.trial_id not in self.trials:
            return
        path = str(checkpoint.path)
        if is_uri(self.root):  # the storage filesystem's path has no scheme
            path = f"{self.root.split('://', 1)[0]}://{path}"
        self.checkpoints[(trial.trial_id, int(epoch))] = path
        self._refresh(trial.trial_id)
        self.flush()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._base_row(trial)
        last = self.last.get(trial.trial_id) or trial.last_result or {}
        self._refresh(trial.trial_id)
        planned = row.get("epochs_planned") or last.get("epochs_planned")
        if last.get("diverged"):
            row["status"] = "diverged"
            row["error"] = (
                f"training loss is {last.get('train_loss')} in epoch {last.get('epoch')} "
                "(non-finite: diverged)"
            )
        elif planned is not None and (row.get("epochs_done") or 0) < planned:
            row["status"] = "stopped-early"
        else:
            row["status"] = "terminated"
        self.flush()
        score = row.get("dev_score")
        score_txt = (
            f"best dev {score:.4f} (epoch {row.get('best_epoch')})" if score is not None else ""
        )
        self._say(f"[{trial}] {row['status']} {score_txt}".rstrip())

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._base_row(trial)
        row["status"] = "error"
        row["error"] = error_message(trial)
        self._refresh(trial.trial_id)
        self.flush()
        self._say(f"[{trial}] error: {row['error']}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"[{trial}] failed: {error_message(trial)}; retrying from its last checkpoint")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()


def _trial_error(trial: Any) -> BaseException | None:
    """The pickled exception of a failed trial: the driver's local copy first (written before
    on_trial_error runs), then the copy in the experiment storage."""
    import cloudpickle

    path = getattr(trial, "pickled_error_file", None)
    try:
        if path and Path(path).exists():
            return cloudpickle.loads(Path(path).read_bytes())
        return trial.get_pickled_error()
    except Exception:
        return None


def error_message(trial: Any) -> str:
    """One line: the original exception of a failed trial, without Ray's wrapping."""
    exc = _trial_error(trial)
    cause = getattr(exc, "cause", None) or exc
    if cause is not None:
        lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        return f"{type(cause).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
    path = getattr(trial, "error_file", None)
    text = Path(path).read_text() if path and Path(path).exists() else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "trial failed (no error file)"
