"""The Tune callback that writes a sweep's Parquet files as trials report and finish.

:class:`ResultsWriter` runs on the driver. It keeps one row per training run, per run-epoch
and per run x exit setting (the schemas of :mod:`berter.sweep.store`) and rewrites the three
files atomically, so a sweep killed at any moment leaves readable files holding every
finished trial.

When it writes: at every trial's end (finished, stopped, diverged, errored) and at the
sweep's end; in between, after a report or a checkpoint, at most once per ``min_interval``
seconds (pending rows are written at the next event or Tune loop step after that), as Tune
throttles its own experiment snapshots. A local directory gets every event at once (interval
0: a rewrite is cheap there, and a plain ``pandas.read_parquet`` is current at any moment); an
object store gets ``URI_INTERVAL``, since each rewrite is three PUTs of every row so far.
benchmarks/store_bytes.py measures the bytes both ways. On ``--resume`` it first loads what is there and merges, and
drops the rows of trials Ray's restored experiment does not know, so each trial appears
exactly once.

A Tune trial is one configuration and trains one run per seed (berter.sweep.seeds): its
result carries each seed's own result, and each becomes the rows of its run
(``trial_id`` = the run, ``config_id`` = the Tune trial). Every run of a configuration is
summarised at the same epoch, the one with the best mean dev score over its seeds (the
epoch whose checkpoint Tune keeps), not at each seed's own luckiest epoch.

A row's ``checkpoint`` names the checkpoint the run keeps (``--keep-checkpoints``,
berter.sweep.retention): while the trial runs, its best epoch's (``best``) or its latest
(``last``); once it has ended, the one Tune's ranking kept (it decides between tied epochs);
nothing for ``none``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray import tune

from berter.errors import BerterError, first_line
from berter.sweep.retention import kept_checkpoint
from berter.sweep.seeds import run_directory, run_id, split
from berter.sweep.store import (
    EXIT_SCHEMA,
    FILES,
    METRICS,
    Store,
    epoch_schema,
    is_uri,
    task_metric_fields,
    to_table,
    trial_schema,
    with_config_id,
    with_later_settings,
)


def best_epoch_row(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the highest finite dev_score (earliest on ties); else the last epoch."""
    scored = [e for e in epochs if e.get("dev_score") is not None and math.isfinite(e["dev_score"])]
    if not scored:
        return max(epochs, key=lambda e: e["epoch"])
    return max(scored, key=lambda e: (e["dev_score"], -e["epoch"]))


def mean_dev_scores(epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch of a configuration's runs, the mean dev score over the runs that reported it
    (NaN when one of them is missing or not finite)."""
    by_epoch: dict[int, list[float]] = {}
    for e in epochs:
        score = e.get("dev_score")
        by_epoch.setdefault(e["epoch"], []).append(math.nan if score is None else float(score))
    return [
        {"epoch": epoch, "dev_score": math.fsum(v) / len(v) if all(map(math.isfinite, v)) else math.nan}
        for epoch, v in by_epoch.items()
    ]


def summarise_trial(
    trial_row: dict[str, Any],
    epochs: list[dict[str, Any]],
    metric_cols: list[str],
    best_epoch: int | None = None,
) -> dict[str, Any]:
    """The run's row with the best epoch's metrics and the whole-run totals filled in; the
    best epoch is ``best_epoch`` when given (the configuration's), else the run's own."""
    row = dict(trial_row)
    if not epochs:
        return row
    epochs = sorted(epochs, key=lambda e: e["epoch"])
    chosen = [e for e in epochs if e["epoch"] == best_epoch]
    best = chosen[0] if chosen else best_epoch_row(epochs)
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


URI_INTERVAL = 30.0  # seconds between rewrites on an object store, trial and sweep ends aside


class ResultsWriter(tune.Callback):
    """Tune callback on the driver: keeps the three tables current as trials report.

    Picklable on purpose (Ray stores it with the experiment and gives it back on resume);
    its rows are (re)loaded from the results directory in :meth:`setup`.
    """

    keep = "best"  # --keep-checkpoints; a class default for writers pickled before it existed

    def __init__(
        self,
        root: str,
        spec: Any,
        name: str,
        tasks: list[str] | tuple[str, ...],
        echo: bool = True,
        min_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        keep: str = "best",
    ):
        self.root = str(root)
        # seconds between rewrites after reports (module docstring); None: by kind of store
        self.min_interval = (URI_INTERVAL if is_uri(self.root) else 0.0) if min_interval is None \
            else min_interval
        self.clock = clock  # injected by benchmarks/store_bytes.py to simulate hours
        self.bytes_written = 0  # by this writer: what benchmarks/store_bytes.py counts
        self.spec = spec  # the sweep's TrialSpec: how a trial config becomes a Config
        self.name = name
        self.echo = echo
        self.keep = keep  # which checkpoint a row names (module docstring)
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
        self.pending = False  # rows changed since the last rewrite
        self.written_at = -math.inf
        self.failing = False  # the last rewrite failed (warned once until one succeeds)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # the files are the state
        state.update(trials={}, epochs={}, exits={}, checkpoints={}, last={}, pending=False,
                     failing=False)
        return state

    # -- loading
    def setup(self, **info: Any) -> None:
        self.load()

    def load(self) -> None:
        """Start from the rows already in the results directory (a resumed sweep)."""
        self._reset()
        store = Store(self.root)
        trials = store.read_table(FILES["trials"]) or self.trial_schema.empty_table()
        for row in with_config_id(with_later_settings(trials)).to_pylist():
            self.trials[row["trial_id"]] = row
        epochs = store.read_table(FILES["epochs"]) or self.epoch_schema.empty_table()
        for row in with_config_id(epochs).to_pylist():
            self.epochs[(row["trial_id"], row["epoch"])] = row
        exits = store.read_table(FILES["exits"]) or EXIT_SCHEMA.empty_table()
        for row in with_config_id(exits).to_pylist():
            self.exits.setdefault((row["trial_id"], row["epoch"]), []).append(row)

    def prune(self, known: set[str]) -> None:
        """Drop rows of trials the restored experiment does not know: a driver killed before
        Ray's next experiment snapshot leaves rows of trials that started after the last one;
        the searcher replaces those trials, so each planned trial appears exactly once."""
        self.pruned = True
        lost = {rid for rid, row in self.trials.items() if row.get("config_id", rid) not in known}
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
    def _runs(self, trial: Any) -> list[tuple[str, int]]:
        """(trial_id, seed) of each training run of a Tune trial, in seed order."""
        seeds = self.spec.run_seeds()
        return [(run_id(trial.trial_id, seed, len(seeds)), seed) for seed in seeds]

    def _config_row(self, trial: Any) -> dict[str, Any]:
        """What the rows of a trial's runs share: identity, variant, resolved config."""
        row = {"config_id": trial.trial_id, "sweep": self.name}
        values = {**self.spec.base, **dict(trial.config)}
        try:
            variant = self.spec.variant_of(trial.config)
            values.update(variant.axes)
            row.update(variant=variant.name, preset=variant.preset)
            values = self.spec.resolve(trial.config).to_dict()
        except Exception:  # an invalid trial config still gets a row, with what it has
            pass
        for field in self.trial_schema:
            if field.name in values and field.name not in row:
                row[field.name] = values[field.name]
        row["model"] = values.get("model")
        return row

    def _base_rows(self, trial: Any) -> list[dict[str, Any]]:
        """The rows of a trial's runs (created on first sight), in seed order."""
        runs = self._runs(trial)
        rows = []
        for rid, seed in runs:
            row = self.trials.get(rid, {})
            if not row:
                row = {**self._config_row(trial), "trial_id": rid, "seed": seed}
            row["trial_name"] = str(trial) if len(runs) == 1 else f"{trial}-seed{seed}"
            self.trials[rid] = row
            rows.append(row)
        return rows

    def _epochs_of(self, trial_id: str) -> list[dict[str, Any]]:
        return [r for (t, _), r in self.epochs.items() if t == trial_id]

    def _best_epoch(self, config_id: str) -> int | None:
        """The epoch of a configuration with the best mean dev score over its runs."""
        runs = {rid for rid, row in self.trials.items() if row.get("config_id") == config_id}
        epochs = [r for (t, _), r in self.epochs.items() if t in runs]
        return best_epoch_row(mean_dev_scores(epochs))["epoch"] if epochs else None

    def _refresh(self, trial_id: str) -> None:
        row = self.trials[trial_id]
        best = self._best_epoch(row.get("config_id", trial_id))
        row.update(summarise_trial(row, self._epochs_of(trial_id), self.metric_cols, best))
        if self.keep == "none":
            row["checkpoint"] = None
        else:
            path = self.checkpoints.get((trial_id, self._kept_epoch(trial_id, row)))
            if path is not None:  # else keep what a resumed sweep's file had
                row["checkpoint"] = path
        row["updated_at"] = datetime.now(timezone.utc)

    def _kept_epoch(self, trial_id: str, row: dict[str, Any]) -> int | None:
        """While the trial runs: the epoch whose checkpoint Tune keeps for ``keep``."""
        if self.keep == "best":
            return row.get("best_epoch")
        return max((e for t, e in self.checkpoints if t == trial_id), default=None)

    def _ended(self, trial: Any) -> None:
        """Name the checkpoint an ended trial keeps (berter.sweep.retention trims the rest)."""
        path = kept_checkpoint(trial, self.keep)
        if path is not None and is_uri(self.root):
            path = f"{self.root.split('://', 1)[0]}://{path}"
        runs = self._runs(trial)
        for rid, seed in runs:
            self.trials[rid]["checkpoint"] = (
                None if path is None else run_directory(path, seed, len(runs))
            )

    def flush(self, due: bool = True) -> None:
        """Rewrite the three files (each atomically); with ``due=False`` (after a report or a
        checkpoint) only when ``min_interval`` has passed since the last rewrite, else mark
        the rows pending (module docstring)."""
        now = self.clock()
        if not due and now - self.written_at < self.min_interval:
            self.pending = True
            return
        self.pending, self.written_at = False, now
        try:
            self._write()
        except (OSError, BerterError, pa.ArrowException) as exc:
            self.pending = True  # the rows stay; the next event or loop step tries again
            if not self.failing:
                print(f"warning: cannot write the results to {self.root}: {first_line(exc)}; "
                      "the files keep their last complete version, retrying",
                      file=sys.stderr, flush=True)  # fmt: skip
            self.failing = True
            return
        if self.failing:
            self._say(f"results written to {self.root} again")
        self.failing = False

    def _write(self) -> None:
        """The three files, each replaced whole (an object store: one PUT each)."""
        store = Store(self.root)
        trials = sorted(self.trials.values(), key=lambda r: r["trial_id"])
        epochs = sorted(self.epochs.values(), key=lambda r: (r["trial_id"], r["epoch"]))
        exits = []
        for row in trials:
            best = row.get("best_epoch")
            exits.extend(self.exits.get((row["trial_id"], best), []) if best is not None else [])
        for key, table in (("trials", to_table(trials, self.trial_schema)),
                           ("epochs", to_table(epochs, self.epoch_schema)),
                           ("exits", to_table(exits, EXIT_SCHEMA))):  # fmt: skip
            self.bytes_written += store.write_table(FILES[key], table)

    def _say(self, msg: str) -> None:
        if self.echo:
            print(msg, flush=True)

    # -- Tune hooks
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.pruned:  # the first step: ``trials`` are exactly the restored ones
            self.prune({t.trial_id for t in trials})
        if self.pending:  # reports held back by the interval, written once it has passed
            self.flush(due=False)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for row in self._base_rows(trial):
            row["status"] = "running"
            row["error"] = None
        self.flush(due=False)

    def _record(self, row: dict[str, Any], result: dict[str, Any]) -> None:
        """One run's result of one epoch: its epoch row, its exit rows, its trial row."""
        rid = row["trial_id"]
        row["status"] = "running"
        for key in ("started_at", "setup_seconds", "data_source", "model", "preset",
                    "epochs_planned"):  # fmt: skip
            if result.get(key) is not None:
                row[key] = result[key]
        epoch = int(result["epoch"])
        ids = {"trial_id": rid, "config_id": row["config_id"], "seed": row.get("seed"),
               "variant": row.get("variant")}  # fmt: skip
        erow = {k: result.get(k) for k in self.epoch_schema.names}
        erow.update(ids, trial_name=row["trial_name"], reported_at=datetime.now(timezone.utc))
        self.epochs[(rid, epoch)] = erow
        self.exits[(rid, epoch)] = [
            {**x, **ids, "epoch": epoch} for x in result.get("exit_table") or []
        ]

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if "epoch" not in result:
            return
        rows = self._base_rows(trial)
        seeded = split(result)  # fewer than the runs when a seed diverged mid-epoch
        for row, run_result in zip(rows, seeded, strict=False):
            self._record(row, run_result)
        self.last[trial.trial_id] = result
        for row in rows:
            self._refresh(row["trial_id"])
        self.flush(due=False)
        exit_layer = result.get("avg_exit_layer")
        layers = result.get("num_layers")
        exit_txt = f" exit layer {exit_layer:.2f}/{layers}" if exit_layer is not None else ""
        seconds = sum(r.get("epoch_seconds") or 0.0 for r in seeded)
        seeds_txt = f"mean of {len(seeded)} seeds, " if len(rows) > 1 else ""
        self._say(
            f"[{trial}] epoch {result['epoch']}/{result.get('epochs_planned')} "
            f"dev {result.get('dev_score', float('nan')):.4f}{exit_txt} "
            f"({seeds_txt}{seconds:.1f}s)"
            + (" DIVERGED" if result.get("diverged") else "")
        )

    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        """Note where the epoch just reported was saved (Tune reports, then saves)."""
        epoch = (trial.last_result or {}).get("epoch")
        runs = self._runs(trial)
        if epoch is None or any(rid not in self.trials for rid, _ in runs):
            return
        path = str(checkpoint.path)
        if is_uri(self.root):  # the storage filesystem's path has no scheme
            path = f"{self.root.split('://', 1)[0]}://{path}"
        for rid, seed in runs:
            self.checkpoints[(rid, int(epoch))] = run_directory(path, seed, len(runs))
            self._refresh(rid)
        self.flush(due=False)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rows = self._base_rows(trial)
        last = self.last.get(trial.trial_id) or trial.last_result or {}
        culprit = next((r for r in split(last) if r.get("diverged")), last)
        for row in rows:
            self._refresh(row["trial_id"])
            planned = row.get("epochs_planned") or last.get("epochs_planned")
            if last.get("diverged"):  # one diverged seed: the configuration diverged
                row["status"] = "diverged"
                row["error"] = (
                    f"training loss is {culprit.get('train_loss')} in epoch "
                    f"{culprit.get('epoch')} (non-finite: diverged)"
                )
                if len(rows) > 1 and culprit.get("seed") != row.get("seed"):
                    row["error"] = f"seed {culprit.get('seed')} of this configuration: {row['error']}"
            elif planned is not None and (row.get("epochs_done") or 0) < planned:
                row["status"] = "stopped-early"
            else:
                row["status"] = "terminated"
        self._ended(trial)
        self.flush()
        scores = [r.get("dev_score") for r in rows]
        score_txt = ""
        if all(s is not None for s in scores):
            mean = math.fsum(scores) / len(scores)
            of = f", mean of {len(rows)} seeds" if len(rows) > 1 else ""
            score_txt = f"best dev {mean:.4f} (epoch {rows[0].get('best_epoch')}{of})"
        self._say(f"[{trial}] {rows[0]['status']} {score_txt}".rstrip())

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        message = error_message(trial)
        for row in self._base_rows(trial):
            row["status"] = "error"
            row["error"] = message
            self._refresh(row["trial_id"])
        self._ended(trial)
        self.flush()
        self._say(f"[{trial}] error: {message}")

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
