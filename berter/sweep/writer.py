"""The Tune callback that writes a sweep's Parquet files as trials report and finish.

:class:`ResultsWriter` runs on the driver. It keeps one row per trial, per trial-epoch and
per trial x exit setting (the schemas of :mod:`berter.sweep.store`) and rewrites the three
files atomically after every event, so a sweep killed at any moment leaves readable files
holding every finished trial. On ``--resume`` it first loads what is there and merges, and
drops the rows of trials Ray's restored experiment does not know, so each trial appears
exactly once.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ray import tune

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
    with_later_settings,
)


def best_epoch_row(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the highest finite dev_score (earliest on ties); else the last epoch."""
    scored = [e for e in epochs if e.get("dev_score") is not None and math.isfinite(e["dev_score"])]
    if not scored:
        return max(epochs, key=lambda e: e["epoch"])
    return max(scored, key=lambda e: (e["dev_score"], -e["epoch"]))


def summarise_trial(
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


class ResultsWriter(tune.Callback):
    """Tune callback on the driver: keeps the three tables current as trials report.

    Picklable on purpose (Ray stores it with the experiment and gives it back on resume);
    its rows are (re)loaded from the results directory in :meth:`setup`.
    """

    def __init__(
        self,
        root: str,
        spec: Any,
        name: str,
        tasks: list[str] | tuple[str, ...],
        echo: bool = True,
    ):
        self.root = str(root)
        self.spec = spec  # the sweep's TrialSpec: how a trial config becomes a Config
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
        for row in with_later_settings(trials).to_pylist():
            self.trials[row["trial_id"]] = row
        for row in (store.read_table(FILES["epochs"]) or self.epoch_schema.empty_table()).to_pylist():
            self.epochs[(row["trial_id"], row["epoch"])] = row
        for row in (store.read_table(FILES["exits"]) or EXIT_SCHEMA.empty_table()).to_pylist():
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
            row["seed"] = values.get("seed")
        row["trial_name"] = str(trial)
        self.trials[trial_id] = row
        return row

    def _epochs_of(self, trial_id: str) -> list[dict[str, Any]]:
        return [r for (t, _), r in self.epochs.items() if t == trial_id]

    def _refresh(self, trial_id: str) -> None:
        row = self.trials[trial_id]
        row.update(summarise_trial(row, self._epochs_of(trial_id), self.metric_cols))
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
