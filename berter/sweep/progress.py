"""A sweep's live progress on a terminal: a rich view of the trials, the best so far and the time.

On a terminal (stdout is a TTY, as rich's ``Console.is_terminal`` decides; ``FORCE_TERMINAL``
and ``TTY_INTERACTIVE`` override it) :class:`LiveProgress` keeps a view at the bottom of the
screen: how many trials are running, pending, finished, stopped early (ASHA), diverged and
errored, each running trial's epoch and latest and best score, the best trial so far, the
time elapsed and an estimate of the time left. The results writer's one line per event
(berter.sweep.writer) scrolls above it. Anywhere else (CI, a log file, a pipe) the view is
off and those lines are all the output, as before.

Why a Tune ``Callback`` and not a ``tune.ProgressReporter`` / ``CLIReporter`` (Ray 2.60):
``tune.run`` ignores a passed ``progress_reporter`` whenever Ray's new output engine is on
(``RAY_AIR_NEW_OUTPUT`` defaults to 1: "AIR_VERBOSITY is set, ignoring passed-in
ProgressReporter", ray/tune/tune.py), and with it off, as the sweep runs
(berter.sweep.tuner.quiet_ray), a legacy reporter is only called at ``verbose >= 1``, where
Ray also prints its own status tables; the sweep runs at ``verbose=0``. Ray Train's v2
``RunConfig`` already refuses ``progress_reporter`` as deprecated. A Callback's hooks
(``setup``, ``on_trial_result``, ``on_step_end``, ``on_experiment_end``) run on the driver
under either engine and at any verbosity, with the Trial objects. Tune stores the callbacks
with the experiment (tuner.pkl) and restores them on ``--resume``, so the callback decides
terminal or not in ``setup``, each time a sweep starts or resumes, not when it was created.

The view is built from plain :class:`TrialView` snapshots (:func:`trial_view` reads a Tune
trial), so :func:`render` needs no Ray; the snapshot is taken on Tune's thread and rendered
on rich's refresh thread, so the clock ticks between events.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ray import tune
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

STATES = ("running", "pending", "finished", "stopped", "diverged", "errored")
MAX_ROWS = 12  # running trials listed; more are counted in one line
REFRESH_PER_SECOND = 2.0


@dataclass(frozen=True)
class TrialView:
    """One trial as the view shows it."""

    name: str
    state: str  # one of STATES
    epoch: int | None = None  # the latest reported
    epochs: int | None = None  # planned
    score: float | None = None  # the objective at the latest epoch
    best: float | None = None  # the trial's best objective so far
    best_epoch: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """The sweep at one moment: its trials, and what the estimate of the time left needs."""

    name: str
    metric: str
    mode: str  # "max" or "min"
    total: int  # trials planned (those the searcher has not proposed yet are pending)
    trials: tuple[TrialView, ...] = ()
    started: float = field(default_factory=time.monotonic)  # time.monotonic() at the start
    epochs_done: int = 0  # trial-epochs reported since the start
    epochs_per_trial: int = 1  # for trials not started: the plan's epochs


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def trial_view(trial: Any, metric: str, best: tuple[float, int] | None = None) -> TrialView:
    """A Tune trial (``status``, ``last_result``, ``str()`` its name) as a :class:`TrialView`;
    ``best``: its best (score, epoch) so far. Tune says TERMINATED both for a trial that ran
    all its epochs and for one ASHA stopped; the planned epochs tell them apart."""
    result = getattr(trial, "last_result", None) or {}
    epoch, epochs = result.get("epoch"), result.get("epochs_planned")
    status = str(trial.status)
    if status == "RUNNING":
        state = "running"
    elif status == "ERROR":
        state = "errored"
    elif status == "TERMINATED":
        if result.get("diverged"):
            state = "diverged"
        elif epoch is not None and epochs is not None and epoch < epochs:
            state = "stopped"
        else:
            state = "finished"
    else:  # PENDING, PAUSED
        state = "pending"
    return TrialView(
        name=str(trial),
        state=state,
        epoch=epoch,
        epochs=epochs,
        score=_finite(result.get(metric)),
        best=best[0] if best else None,
        best_epoch=best[1] if best else None,
    )


def counts(snap: Snapshot) -> dict[str, int]:
    """Trials per state; trials the searcher has not proposed yet count as pending."""
    out = dict.fromkeys(STATES, 0)
    for t in snap.trials:
        out[t.state] += 1
    out["pending"] = max(out["pending"], snap.total - (len(snap.trials) - out["pending"]))
    return out


def best_so_far(snap: Snapshot) -> TrialView | None:
    """The trial with the best score any trial reported so far."""
    scored = [t for t in snap.trials if t.best is not None]
    if not scored:
        return None
    sign = 1 if snap.mode == "max" else -1
    return max(scored, key=lambda t: sign * t.best)


def seconds_left(snap: Snapshot, now: float) -> float | None:
    """Epochs still to train over the rate they were trained at so far (all trials at once):
    an upper bound where ASHA stops trials early. None before the first epoch is reported."""
    elapsed = now - snap.started
    if snap.epochs_done == 0 or elapsed <= 0:
        return None
    n = counts(snap)
    running = [t for t in snap.trials if t.state == "running"]
    left = sum(max(0, (t.epochs or snap.epochs_per_trial) - (t.epoch or 0)) for t in running)
    left += n["pending"] * snap.epochs_per_trial
    return left * elapsed / snap.epochs_done


def duration(seconds: float) -> str:
    """1h 02m, 3m 05s, 42s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def _score(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def render(snap: Snapshot, now: float | None = None) -> RenderableType:
    """The view: a header with the time, the counts, the running trials, the best so far."""
    now = time.monotonic() if now is None else now
    left = seconds_left(snap, now)
    n = counts(snap)
    if n["running"] + n["pending"] == 0:
        left_txt = "no trial left"
    elif left is None:
        left_txt = "time left: estimating"
    else:
        left_txt = f"~{duration(left)} left (at most)"
    header = Text(f"sweep {snap.name}: {duration(now - snap.started)} elapsed, {left_txt}", "bold")
    tally = Text(" · ".join(f"{state} {n[state]}" for state in STATES))
    running = [t for t in snap.trials if t.state == "running"]
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col, justify in (("running trial", "left"), ("epoch", "right"),
                         (f"latest {snap.metric}", "right"), ("its best", "right")):  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for t in running[:MAX_ROWS]:
        epoch = "-" if t.epoch is None else f"{t.epoch}/{t.epochs or '?'}"
        table.add_row(t.name, epoch, _score(t.score), _score(t.best))
    parts: list[RenderableType] = [header, tally]
    if running:
        parts.append(table)
    if len(running) > MAX_ROWS:
        parts.append(Text(f"... and {len(running) - MAX_ROWS} more running"))
    best = best_so_far(snap)
    parts.append(
        Text(f"best so far: {snap.metric} {_score(best.best)}  {best.name} (epoch {best.best_epoch})")
        if best
        else Text(f"best so far: no {snap.metric} reported yet")
    )
    return Group(*parts)


class LiveProgress(tune.Callback):
    """Tune callback on the driver: the live view on a terminal, nothing anywhere else (see the
    module's docstring for why a Callback). Picklable: Tune stores it with the experiment."""

    def __init__(self, name: str, metric: str, mode: str, epochs_per_trial: int):
        self.name, self.metric, self.mode = name, metric, mode
        self.epochs_per_trial = epochs_per_trial
        self._reset(total=0)

    def _reset(self, total: int) -> None:
        self.live: Live | None = None
        self.best: dict[str, tuple[float, int]] = {}  # trial id -> (best score, its epoch)
        self.snap = Snapshot(self.name, self.metric, self.mode, total,
                             epochs_per_trial=self.epochs_per_trial)  # fmt: skip
        self.shown_at = 0.0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(live=None, best={})
        return state

    def setup(self, total_num_samples: int | None = None, **info: Any) -> None:
        self._reset(total=total_num_samples or 0)
        console = Console()
        if console.is_terminal and not console.is_dumb_terminal:
            self.live = Live(
                console=console,
                get_renderable=lambda: render(self.snap),
                refresh_per_second=REFRESH_PER_SECOND,
                transient=False,  # the last view stays above the summary
                redirect_stdout=True,  # the writer's lines (and Ray's) scroll above the view
                redirect_stderr=True,
            )
            self.live.start()

    def _take(self, trials: Sequence[Any]) -> None:
        views = tuple(trial_view(t, self.metric, self.best.get(t.trial_id)) for t in trials)
        self.snap = replace(self.snap, trials=views)
        self.shown_at = time.monotonic()

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if self.live is None or "epoch" not in result:
            return
        score = _finite(result.get(self.metric))
        old = self.best.get(trial.trial_id)
        sign = 1 if self.mode == "max" else -1
        if score is not None and (old is None or sign * score > sign * old[0]):
            self.best[trial.trial_id] = (score, int(result["epoch"]))
        self.snap = replace(self.snap, epochs_done=self.snap.epochs_done + 1)
        self.shown_at = 0.0  # Tune updates trial.last_result after this hook: at the step's end

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.live is not None and time.monotonic() - self.shown_at >= 1 / REFRESH_PER_SECOND:
            self._take(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.live is None:
            return
        self._take(trials)
        self.live.refresh()
        self.live.stop()
        self.live = None

