"""The sweep's command line: ``python sweeps/run.py``, ``python -m berter.sweep``, ``berter sweep``.

Everything the user can get wrong (options, search names, variants, data, model, results
directory) is checked before any trial starts (berter.sweep.plan); a problem is one line on
stderr and exit status 2, with nothing written. Then the data source and the plan are
announced and berter.sweep.tuner runs the trials.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from berter.config import Config
from berter.errors import BerterError, ConfigError, RaisingArgumentParser, non_negative_int
from berter.sweep import tuner
from berter.sweep.plan import (
    DEFAULT_NUM_SAMPLES,
    DEMO_DEFAULTS,
    SWEEP_FILE,
    Plan,
    make_plan,
    resume_plan,
)
from berter.sweep.preflight import data_warnings
from berter.sweep.space import FIXED_ONLY, space_help
from berter.train.callbacks import build_callbacks

# Options that define a sweep; --resume takes them from sweep.json.
SWEEP_OPTIONS = (
    "search", "set", "range", "variants", "data_dir", "data", "tasks", "model", "num_samples",
    "epochs", "max_train", "max_dev", "max_len", "scheduler", "search_alg", "objective", "seed",
    "cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures", "grace_period",
    "reduction_factor", "seeds", "callback", "tracking", "keep_checkpoints", "speedup_examples",
)  # fmt: skip


def fixed_only_help() -> str:
    """The --set-only names, wrapped to the help's width."""
    return "\n".join(
        textwrap.wrap(", ".join(FIXED_ONLY), 88, initial_indent="  ", subsequent_indent="  ")
    )


EPILOG = f"""\
searchable names (--search), default = the Config default, with its range when searched:
{space_help()}
--set NAME=VALUE fixes a name for every trial (--set lr=2e-5 --set batch=32), and also these
Config fields, which are not searched (--set task_order=proportional):
{fixed_only_help()}.
--range NAME=LOW:HIGH (a choice: NAME=A|B) replaces a searched name's range (--range lr=1e-5:1e-3).
The BERTer paper's best setting is lr 1.3e-5, batch 16, dropout 0.3, 5 epochs; the lr
default is {Config.lr:g} because the packaged 6-layer backbone learns too slowly at 1.3e-5
in a few epochs.

--search none searches nothing: a grid of the --variants at the fixed settings, one trial
per variant, run to the end (FIFO), e.g. --variants paper --seeds 3 --search none.

Variants (--variants): "paper" (the twelve BERTer Table 2 rows), "all", a preset name, or a
filter such as "smart=para,exit=lte". Without --variants the Config default variant runs.
Without a variant axis in --search, trial i gets variant i mod V (so --num-samples V covers
all V). With an axis in --search the searcher picks it, among the values the --variants
selection allows (every value without --variants), other axes as selected.

Data: --data-dir DIR, or --data demo. Without either, ./data is used when it holds the task
files, else the built-in demo set, with the defaults --num-samples {DEMO_DEFAULTS["num_samples"]} --epochs {DEMO_DEFAULTS["epochs"]}
--max-train {DEMO_DEFAULTS["max_train"]} (a few minutes on 2 CPU cores).
On real data the defaults are --num-samples {DEFAULT_NUM_SAMPLES} and the Config epochs.

Seeds: --seeds N trains every configuration N times (seeds --seed, --seed + 1, ...), one
epoch of each in turn within one trial; ASHA and Optuna see the mean over the seeds, and
the results hold one row per seed (trial_id <config_id>-seed<k>, config_id, seed).

Scheduling: ASHA (grace period 1 epoch, max_t = the longest trial's epochs, reduction
factor 2 for runs of up to 4 epochs, else 3) stops weak trials early; its time axis counts
main epochs, so a Sequential Layer Focus warm-up epoch is not compared with full epochs of
other variants. A configuration is never run twice (training is seeded: it would report
the same scores), and trials ASHA stopped are told to Optuna as pruned. A two-objective
--objective uses FIFO (ASHA is single-objective) and prints the Pareto front.

Callbacks: --callback package.module:ClassName adds a berter.train.callbacks.TrainerCallback
subclass to every trial (your own logging, early stopping); it is built in each trial's
process, so its module must be importable on every Ray worker (PYTHONPATH, or an installed
package), and once here, as a check, before any trial starts. --resume keeps the callbacks.

Results: <results>/<name>/trials.parquet, epochs.parquet, exits.parquet; --resume continues
an interrupted sweep from <results>/<name>/ray with the options in its sweep.json.

Checkpoints: a running trial keeps its latest checkpoint (what --resume and --max-failures
read) and, with --keep-checkpoints best, its best epoch's. Once it has ended (finished,
stopped by ASHA, diverged or errored), it keeps one without the optimiser state (best: the
best epoch's, last: the latest) or, with none, nothing; trials.parquet's checkpoint column
names the one kept, a `berter infer` checkpoint."""


def build_parser(prog: str = "python sweeps/run.py") -> argparse.ArgumentParser:
    p = RaisingArgumentParser(
        prog=prog,
        description="Hyperparameter sweep over early-exit multitask BERT variants (Ray Tune + Optuna).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--search",
        help="comma-separated names to search (see below), e.g. lr,batch,dropout; none: a grid",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="fix a name for every trial, e.g. --set lr=2e-5 (repeatable)",
    )
    p.add_argument(
        "--range",
        action="append",
        metavar="NAME=LOW:HIGH",
        help="search a name over this range, e.g. --range lr=1e-5:1e-3, --range batch=8|16",
    )
    p.add_argument(
        "--variants", help='"paper", "all", a preset name, or a filter "smart=para,exit=lte"'
    )
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data-dir", help="CS224N or GLUE data directory")
    data.add_argument("--data", choices=["demo"], help="demo: the built-in demo set")
    p.add_argument("--tasks", help="comma-separated tasks (default sst,para,sts)")
    p.add_argument(
        "--model", help="backbone: 'packaged' (default), a local directory or a hub name"
    )
    p.add_argument("--num-samples", type=int, help="number of trials (default: see below)")
    p.add_argument(
        "--epochs", type=int, help="epochs per trial (upper bound if epochs is searched)"
    )
    p.add_argument("--max-train", type=int, help="training examples per task (seeded subset)")
    p.add_argument("--max-dev", type=int, help="dev examples per task (seeded subset)")
    p.add_argument("--max-len", type=int, help="max tokens per sequence (default 128)")
    p.add_argument(
        "--scheduler", choices=["asha", "fifo"], help="default asha; fifo for --search none"
    )
    p.add_argument(
        "--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped"
    )
    p.add_argument(
        "--reduction-factor",
        type=float,
        help="ASHA: 1/fraction of trials kept at each rung (default 2 for <= 4 epochs, else 3)",
    )
    p.add_argument(
        "--search-alg",
        choices=["optuna", "random"],
        default="optuna",
        help="optuna: TPE; random: Optuna's random sampler (same seeding)",
    )
    p.add_argument(
        "--objective",
        default="dev_score",
        help="dev_score, or two objectives: dev_score,avg_exit_layer (Pareto front)",
    )
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="default 1 when this machine has CUDA (with --address: when the cluster has or "
        "its autoscaler can add GPU workers), else 0",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        help="trials at once (default: as many as fit the cluster scaled up, at most "
        "--num-samples)",
    )
    p.add_argument("--name", help="sweep name (default sweep-<date>-<time>)")
    p.add_argument(
        "--results", default="results", help="results root: a directory or s3:// / gs:// URI"
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep --name")
    p.add_argument(
        "--retry-errored",
        action="store_true",
        help="with --resume: start the trials that errored again from scratch (Ray's "
        "Tuner.restore(restart_errored=True)); without it they stay errored",
    )
    p.add_argument(
        "--address", help="join a Ray cluster: auto (on the head node) or ray://host:10001"
    )
    p.add_argument(
        "--seed", type=int, help="seed of the searcher, the data subsets and training (default 0)"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="training seeds per configuration (--seed, --seed + 1, ...); their mean is reported",
    )
    p.add_argument(
        "--speedup-examples",
        type=non_negative_int,
        default=Plan.speedup_examples,
        help="dev examples per task timed when a trial ends for its wall-clock early-exit "
        "speedup (default %(default)s; 0: not timed)",
    )
    p.add_argument(
        "--tracking",
        action="append",
        metavar="mlflow[=URI]|wandb|tensorboard",
        help="log every trial to an experiment tracker with Ray's logger callbacks (repeatable;"
        " mlflow's default store: ./mlflow.db; the packages: pip install -e '.[tracking]')",
    )
    p.add_argument(
        "--keep-checkpoints",
        choices=["best", "last", "none"],
        default="best",
        help="what a trial keeps once it has ended: its best epoch's checkpoint (default), its"
        " last, or none; either without the optimiser state (a running trial keeps its latest)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (trials, variants, searched ranges, resources, data sizes) and exit"
        " without starting Ray or writing anything",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=0,
        help="retries of a failed trial (a crash, a lost node), each from its last checkpoint",
    )
    p.add_argument(
        "--callback",
        action="append",
        metavar="MODULE:CLASS",
        help="a TrainerCallback subclass every trial runs, e.g. mypkg.hooks:EarlyStop "
        "(repeatable; see below)",
    )
    return p  # fmt: skip


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


def main(
    argv: list[str] | None = None,
    *,
    prog: str = "python sweeps/run.py",
    callbacks: list | None = None,
) -> int:
    """Command-line entry point; ``callbacks`` are extra Tune callbacks (tests use them).

    A thin wrapper over the code path of :func:`berter.sweep.run`: parse, :func:`checked`
    (a problem is one line and exit 2), then :func:`sweep`."""
    try:
        args = build_parser(prog).parse_args(argv)
        plan, data = checked(args)
    except BerterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return sweep(args, plan, data, callbacks=callbacks)


def checked(args: argparse.Namespace) -> tuple[Plan, Any]:
    """The plan of the parsed options and its data, every option checked; a problem is a
    BerterError with nothing written (and the Ray instance started meanwhile stopped)."""
    started: list[bool] = []  # whether this call started Ray (to stop it on a late error)
    try:
        if args.retry_errored and not args.resume:
            raise ConfigError("--retry-errored needs --resume")
        if args.resume:
            plan, data = resumed(args, build_parser())
        else:
            early = not (args.address or args.dry_run)
            plan, data = make_plan(args, alongside=tuner.early_ray(started) if early else None)
        build_callbacks(plan.callbacks)  # importable and buildable, before any trial starts
    except BerterError:
        if started:  # nothing ran on it; the error stays the only output
            import ray

            ray.shutdown()
        raise
    return plan, data


def sweep(
    args: argparse.Namespace, plan: Plan, data: Any, *, callbacks: list | None = None
) -> int:
    """Print the plan (``--dry-run``: exit status 0, nothing started), or announce it and run
    the sweep (exit status 0 when it succeeded, else 1: berter.sweep.tuner.summary)."""
    if args.dry_run:
        print(dry_run_text(plan, data))
        return 0
    announce(plan, args.resume)
    return tuner.run(
        plan,
        data,
        resume=args.resume,
        address=args.address,
        callbacks=callbacks,
        retry_errored=args.retry_errored,
    )


def dry_run_text(plan: Plan, data: Any) -> str:
    """What ``--dry-run`` prints: the resolved plan, nothing started, nothing written."""
    base = plan.base
    if plan.gpus_per_trial is None:  # --address: read from the cluster when the sweep joins it
        gpus = ", 1 GPU if the cluster has or can add GPU workers, else none"
    else:
        gpus = f", {plan.gpus_per_trial:g} GPU" if plan.gpus_per_trial else ""
    concurrent = plan.max_concurrent or (
        f"as many as the Ray cluster holds (counting the workers its autoscaler can add), "
        f"at most {plan.num_samples}"
    )
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
        f"checkpoints kept per ended trial: {plan.keep_checkpoints}",
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


def resumed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Plan, Any]:
    """The plan of the sweep to resume, with a note on the options it ignores, and its data."""
    from berter.data.files import load_data_for

    plan = resume_plan(args)
    ignored = [
        f"--{k.replace('_', '-')}"
        for k in SWEEP_OPTIONS
        if getattr(args, k) not in (None, parser.get_default(k))
    ]
    plan.notes = (
        [f"--resume keeps the options in {SWEEP_FILE}; ignored: {' '.join(ignored)}"]
        if ignored
        else []
    )
    with data_warnings():  # already noted when the sweep started
        data = load_data_for(Config.from_dict(plan.base))
    return plan, data
