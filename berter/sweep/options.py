"""The sweep's options, declared once: the argparse parser of the command line, from which the
Python API (berter.sweep.api) takes its keyword arguments, their defaults and their checks.

A keyword argument is an option's name without the dashes (``num_samples=8`` is
``--num-samples 8``); :func:`to_argv` turns keywords into the command line they stand for,
so both ways in are parsed, converted and checked by the same parser.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Mapping
from typing import Any

from berter.config import Config
from berter.errors import ConfigError, RaisingArgumentParser
from berter.sweep.plan import DEFAULT_NUM_SAMPLES, DEMO_DEFAULTS
from berter.sweep.space import FIXED_ONLY, space_help

# Options that define a sweep; --resume takes them from sweep.json.
SWEEP_OPTIONS = (
    "search", "set", "range", "variants", "data_dir", "data", "tasks", "model", "num_samples",
    "epochs", "max_train", "max_dev", "max_len", "scheduler", "search_alg", "objective", "seed",
    "cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures", "grace_period",
    "reduction_factor", "seeds", "callback", "tracking",
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
an interrupted sweep from <results>/<name>/ray with the options in its sweep.json."""


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
        "--gpus-per-trial", type=float, help="default 1 when this machine has CUDA, else 0"
    )
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as fit)")
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
        "--tracking",
        action="append",
        metavar="mlflow[=URI]|wandb|tensorboard",
        help="log every trial to an experiment tracker with Ray's logger callbacks (repeatable;"
        " mlflow's default store: ./mlflow.db; the packages: pip install -e '.[tracking]')",
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


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's options by keyword name (``dest``), ``--help`` left out."""
    return {
        a.dest: a
        for a in parser._actions  # argparse keeps no public list of its options
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    }


def defaults(parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """Every keyword of the Python API with its default: the parser's options and defaults."""
    return {name: a.default for name, a in _actions(parser or build_parser()).items()}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _items(name: str, value: Any) -> list[str]:
    """A repeatable option's values: ``set={"lr": 2e-5}`` -> ``["lr=2e-05"]``; for ``range``
    a (low, high) pair is ``low:high`` and a list is the choices ``a|b``; a string or a list of
    strings as they are."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        out = []
        for key, v in value.items():
            if isinstance(v, tuple) and len(v) == 2 and name == "range":
                v = f"{_text(v[0])}:{_text(v[1])}"
            elif isinstance(v, list | tuple):
                v = "|".join(_text(x) for x in v)
            out.append(f"{key}={_text(v)}")
        return out
    if isinstance(value, list | tuple):
        return [_text(v) for v in value]
    return [_text(value)]


def to_argv(options: Mapping[str, Any], parser: argparse.ArgumentParser | None = None) -> list[str]:
    """The command line that keyword arguments stand for (None: the option's default).

    A flag takes True or False; a repeatable option (set, range, tracking, callback) a string,
    a list or a mapping; a comma-separated one (search, tasks, objective, variants) a string
    or a list; anything else a value. An unknown keyword is a ConfigError naming the known ones.
    """
    actions = _actions(parser or build_parser())
    unknown = sorted(set(options) - set(actions))
    if unknown:
        raise ConfigError(
            f"unknown sweep option(s): {', '.join(unknown)}; options: {', '.join(actions)}"
        )
    argv: list[str] = []
    for name, value in options.items():
        action = actions[name]
        flag = action.option_strings[0]
        if value is None:
            continue
        if action.nargs == 0:  # --resume, --dry-run, --retry-errored
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: expected True or False, got {value!r}")
            argv += [flag] if value else []
        elif isinstance(action, argparse._AppendAction):
            argv += [f"{flag}={item}" for item in _items(name, value)]
        elif isinstance(value, list | tuple):
            argv.append(f"{flag}={','.join(_text(v) for v in value)}")
        else:
            argv.append(f"{flag}={_text(value)}")
    return argv


def parse_options(options: Mapping[str, Any]) -> argparse.Namespace:
    """Keyword arguments of the Python API, parsed and checked as their command line would be."""
    parser = build_parser()
    return parser.parse_args(to_argv(options, parser))
