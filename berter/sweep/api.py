"""The Python API of a sweep: ``berter.sweep.run(...)`` does what ``python sweeps/run.py`` does
and returns the three result tables; the command line (berter.sweep.cli) is a thin wrapper.

    from berter.sweep import run

    result = run(search="lr,batch,dropout", data="demo", num_samples=4)
    result.trials.sort_values("dev_score").tail()      # as berter.results.read_results reads it

The keyword arguments are the command line's options (berter.sweep.options: ``num_samples=4``
is ``--num-samples 4``), parsed and checked by the same parser, with the same defaults. A
mistake raises the one-line BerterError the command line prints (ConfigError, DataError)
before anything starts or is written. :class:`Sweep` plans without running (its ``plan``,
``describe()`` the ``--dry-run`` text); ``run(..., dry_run=True)`` prints that text and
returns the plan, without starting Ray or writing anything.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from berter.config import Config
from berter.errors import BerterError, ConfigError
from berter.sweep import tuner
from berter.sweep.options import SWEEP_OPTIONS, defaults, parse_options
from berter.sweep.plan import SWEEP_FILE, Plan, make_plan, resume_plan
from berter.sweep.preflight import data_warnings
from berter.train.callbacks import build_callbacks

if TYPE_CHECKING:
    import pandas as pd


@dataclass(eq=False)  # DataFrames have no single truth value to compare by
class SweepResult:
    """What a sweep leaves: its plan, the three tables as berter.results.read_results reads
    them, and whether it succeeded (every trial done, one at least with a score: the command
    line's exit status 0; an interrupted sweep continues with ``resume=True``)."""

    plan: Plan
    trials: pd.DataFrame  # one row per training run
    epochs: pd.DataFrame  # one row per run and epoch
    exits: pd.DataFrame  # one row per run, exit method and threshold (the best epoch's)
    succeeded: bool

    @property
    def directory(self) -> str:
        """``<results>/<name>``: the Parquet files, sweep.json, the stored study, Ray's state."""
        return self.plan.directory

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by name, as ``read_results(directory)`` gives them."""
        return {"trials": self.trials, "epochs": self.epochs, "exits": self.exits}


class Sweep:
    """A planned sweep: every option resolved and checked, the data loaded; nothing started or
    written until :meth:`run`. ``Sweep(search="lr", data="demo").plan`` is what ``--dry-run``
    shows (``describe()`` its text)."""

    def __init__(self, **options: Any):
        self._prepare(parse_options(options), early_ray=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, early_ray: bool = False) -> Sweep:
        """The sweep of parsed command-line options; ``early_ray``: start the local Ray
        instance while the slow checks run (a failed check stops it again)."""
        sweep = cls.__new__(cls)
        sweep._prepare(args, early_ray)
        return sweep

    def _prepare(self, args: argparse.Namespace, early_ray: bool) -> None:
        self.args = args
        self.ran = False
        started: list[bool] = []  # whether this call started Ray (to stop it on a late error)
        try:
            if args.retry_errored and not args.resume:
                raise ConfigError("--retry-errored needs --resume")
            if args.resume:
                self.plan, self.data = resumed(args)
            else:
                early = early_ray and not (args.address or args.dry_run)
                alongside = tuner.early_ray(started) if early else None
                self.plan, self.data = make_plan(args, alongside=alongside)
            build_callbacks(self.plan.callbacks)  # importable and buildable, before any trial
        except BerterError:
            if started:  # nothing ran on it; the error stays the only output
                import ray

                ray.shutdown()
            raise

    def describe(self) -> str:
        """The plan as ``--dry-run`` prints it."""
        return dry_run_text(self.plan, self.data)

    def run(self, tune_callbacks: list | None = None) -> SweepResult:
        """Run (or resume) the sweep, printing its progress, and read back its tables.
        ``tune_callbacks``: extra ``ray.tune.Callback`` objects on the driver."""
        from berter.sweep.store import read_results

        if self.args.dry_run:
            raise ConfigError("a dry run starts nothing: describe() shows its plan")
        if self.ran:
            raise ConfigError(f"sweep {self.plan.name} has run; resume=True continues it")
        self.ran = True
        announce(self.plan, self.args.resume)
        succeeded = tuner.run(
            self.plan,
            self.data,
            resume=self.args.resume,
            address=self.args.address,
            callbacks=tune_callbacks,
            retry_errored=self.args.retry_errored,
        )
        tables = read_results(self.plan.directory)
        return SweepResult(self.plan, **tables, succeeded=succeeded)


def run(*, tune_callbacks: list | None = None, **options: Any) -> SweepResult | Plan:
    """Run a sweep with the command line's options as keyword arguments and return its
    :class:`SweepResult`; with ``dry_run=True`` print the plan and return it (a
    :class:`~berter.sweep.plan.Plan`) without starting Ray or writing anything."""
    return run_args(parse_options(options), tune_callbacks)


def run_args(args: argparse.Namespace, tune_callbacks: list | None = None) -> SweepResult | Plan:
    """:func:`run` on parsed options: the command line's way in."""
    sweep = Sweep.from_args(args, early_ray=True)
    if args.dry_run:
        print(sweep.describe())
        return sweep.plan
    return sweep.run(tune_callbacks)


def _signature() -> inspect.Signature:
    """``run``'s keyword arguments as ``help()`` shows them: the parser's options and defaults."""
    params = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in defaults().items()
    ]
    params.append(inspect.Parameter("tune_callbacks", inspect.Parameter.KEYWORD_ONLY, default=None))
    return inspect.Signature(params, return_annotation="SweepResult | Plan")


run.__signature__ = _signature()  # type: ignore[attr-defined]


def announce(plan: Plan, resume: bool) -> None:
    """The first lines of output: the data source (real or not), then the plan."""
    if plan.data_is_demo:
        print("data: built-in demo set (not real data); use --data-dir DIR for real data")
    else:
        print(f"data: {plan.data_source}")
    for note in plan.notes:
        print(f"note: {note}")
    what = "resuming" if resume else "sweep"
    variants = plan.variant_objs
    shown = ", ".join(v.preset or v.slug for v in variants[:4]) + (
        " ..." if len(variants) > 4 else ""
    )
    seeds = f" x {plan.seeds} seeds" if plan.seeds > 1 else ""
    search = (
        f"search {','.join(plan.search)}, {plan.search_alg}/{plan.scheduler}"
        if plan.search
        else f"no search (a grid), {plan.scheduler}"
    )
    print(
        f"{what} {plan.name}: {plan.num_samples} trials{seeds}, {len(variants)} variant(s) "
        f"({shown}), {search}, objective {','.join(plan.objective)}, epochs {plan.base['epochs']}"
    )
    sys.stdout.flush()


def dry_run_text(plan: Plan, data: Any) -> str:
    """What ``--dry-run`` prints: the resolved plan, nothing started, nothing written."""
    base = plan.base
    gpus = f", {plan.gpus_per_trial:g} GPU" if plan.gpus_per_trial else ""
    concurrent = plan.max_concurrent or "as many as the Ray cluster's resources hold"
    lines = [
        f"dry run of sweep {plan.name} (nothing started, nothing written)",
        f"results: {plan.directory}",
        f"data: {plan.data_source}" + (" (built-in demo set, not real data)" if plan.data_is_demo else ""),
        f"trials: {plan.num_samples}"
        + (f" x {plan.seeds} seeds ({plan.num_samples * plan.seeds} training runs)" if plan.seeds > 1 else "")
        + f", search {plan.search_alg if plan.search else 'none (a grid of the variants)'}, "
        f"scheduler {plan.scheduler}, "
        f"objective {','.join(f'{o} ({m})' for o, m in zip(plan.objective, plan.modes, strict=True))}",
        f"epochs: {base['epochs']} (ASHA time axis: {plan.max_t} main epochs)",
        f"resources per trial: {plan.cpus_per_trial:g} CPU{gpus}; concurrent trials: {concurrent}",
        f"variants ({len(plan.variant_objs)}):",
        *(f"  {v.preset or '-'}: {v.name}" for v in plan.variant_objs),
        "searched:" if plan.param_objs else "searched: nothing (fixed hyperparameters)",
        *(f"  {p.name}: {p.describe()}" for p in plan.param_objs),
        "data sizes (train / dev / calibration examples):",
        *(
            f"  {name}: {len(s.train)} / {len(s.dev)} / {len(s.calib)}"
            for name, s in data.splits.items()
        ),
    ]
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def resumed(args: argparse.Namespace) -> tuple[Plan, Any]:
    """The plan of the sweep to resume, with a note on the options it ignores, and its data."""
    from berter.data.files import load_data_for

    plan = resume_plan(args)
    default = defaults()
    ignored = [
        f"--{k.replace('_', '-')}"
        for k in SWEEP_OPTIONS
        if getattr(args, k) not in (None, default[k])
    ]
    plan.notes = (
        [f"--resume keeps the options in {SWEEP_FILE}; ignored: {' '.join(ignored)}"]
        if ignored
        else []
    )
    with data_warnings():  # already noted when the sweep started
        data = load_data_for(Config.from_dict(plan.base))
    return plan, data
