"""A sweep's plan: every option resolved and checked before any trial starts, saved as sweep.json.

:func:`make_plan` turns the parsed command line into a :class:`Plan` and loads the data, in
named steps: the options that need no imports first (search names, --set values, counts,
objective, name), then, in a helper thread while the sweep starts Ray (``alongside``), the
results directory, the data source and the trial budget, the base config, the candidate
variants, the searched ranges, the data, the backbone and ASHA's time axis. Anything wrong
is a ConfigError or DataError (one line, exit 2) and nothing has been written.
:func:`resume_plan` reads the plan of an interrupted sweep back from its sweep.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from berter.config import Config
from berter.errors import ConfigError
from berter.sweep.preflight import _check_model, concurrently, data_warnings, main_epochs
from berter.sweep.space import (
    BY_NAME,
    SearchParam,
    SearchSpace,
    apply_ranges,
    candidate_variants,
    parse_search,
    parse_settings,
    space_size,
    with_epoch_bound,
)
from berter.sweep.tracking import parse_tracking

if TYPE_CHECKING:  # berter.variants imports the exit methods (torch): not before Ray starts
    from berter.variants import Variant

SWEEP_FILE = "sweep.json"
RAY_DIR = "ray"
DEMO_DEFAULTS = {"num_samples": 4, "epochs": 2, "max_train": 200}  # Quickstart: minutes on 2 cores
DEFAULT_NUM_SAMPLES = 16
OBJECTIVE_MODES = {"dev_score": "max", "dev_score_exit": "max", "avg_exit_layer": "min",
                   "speedup_wall": "max"}  # fmt: skip


@dataclass
class Plan:
    """Every resolved option of a sweep; saved as sweep.json so --resume can rebuild it."""

    name: str
    directory: str  # <results>/<name>, local absolute path or URI
    base: dict[str, Any]
    variants: list[dict[str, Any]]
    search: list[str]
    params: list[dict[str, Any]]
    round_robin: bool
    num_samples: int
    scheduler: str
    search_alg: str
    objective: list[str]
    modes: list[str]
    max_t: int
    cpus_per_trial: float
    # None: not given, on a cluster (--address): set when the sweep joins it, from what the
    # cluster has and can add (berter.sweep.tuner.size_for_cluster), before sweep.json is saved
    gpus_per_trial: float | None
    max_concurrent: int | None
    max_failures: int
    seed: int  # the searcher's, the data subsets' and the first training seed
    data_source: str
    data_is_demo: bool
    notes: list[str] = field(default_factory=list)
    created_at: str = ""
    grace_period: int = 1  # ASHA
    reduction_factor: float | None = None  # ASHA; None: berter.sweep.searcher.reduction_factor
    seeds: int = 1  # training runs per configuration, seed .. seed + seeds - 1 (berter.sweep.seeds)
    callbacks: list[str] = field(default_factory=list)  # --callback: TrainerCallback paths
    tracking: list[str] = field(default_factory=list)  # berter.sweep.tracking specs
    keep_checkpoints: str = "best"  # what an ended trial keeps (berter.sweep.retention)
    # dev examples per task timed at batch 1 and 32 when a trial ends, for speedup_wall: the
    # timing costs seconds per example and seed on a CPU; 0 skips it (speedup_wall empty)
    speedup_examples: int = 64

    @property
    def variant_objs(self) -> list[Variant]:
        from berter.variants import Variant

        return [Variant.from_dict(v) for v in self.variants]

    @property
    def param_objs(self) -> list[SearchParam]:
        return [SearchParam(**{**p, "choices": tuple(p["choices"])}) for p in self.params]

    @property
    def storage(self) -> str:
        return f"{self.directory}/{RAY_DIR}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**json.loads(text))


class Budget(NamedTuple):
    """How much a sweep runs, and a note when the demo set's small defaults were filled in."""

    num_samples: int
    epochs: int
    max_train: int | None
    notes: list[str]


# ----------------------------------------------------------------------------- a new plan
def make_plan(
    args: argparse.Namespace, alongside: Callable[[], None] | None = None
) -> tuple[Plan, Any]:
    """Resolve and validate every option of a new sweep (and load its data); nothing is written.

    The options that need no imports are checked first; then ``alongside`` (the sweep starts
    Ray there) runs in this thread while the rest (config, variants, results directory, data,
    model: seconds of torch / transformers imports) is checked in another.
    """
    if not args.search:
        raise ConfigError(
            "--search is required, e.g. --search lr,batch,dropout (or --search none: "
            "the --variants at fixed settings)"
        )
    params = parse_search(args.search)
    hyper = [p for p in params if p.kind != "axis"]
    settings = parse_settings(args.set, params)
    _check_numbers(args, settings)
    objective = _objectives(args.objective)
    name = _sweep_name(args.name)
    return concurrently(
        lambda: _resolve_plan(args, name, params, hyper, settings, objective), alongside
    )


def _check_numbers(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    """Counts, resources and ASHA's settings in range; --epochs and --set epochs not both."""
    if "epochs" in settings and args.epochs is not None:
        raise ConfigError("--set epochs conflicts with --epochs; give one")
    for opt in ("num_samples", "epochs", "max_train", "max_dev", "max_len", "max_concurrent",
                "seeds"):  # fmt: skip
        value = getattr(args, opt)
        if value is not None and value < 1:
            raise ConfigError(f"--{opt.replace('_', '-')} must be >= 1, got {value}")
    if args.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures}")
    if args.grace_period < 1:
        raise ConfigError(f"--grace-period must be >= 1, got {args.grace_period}")
    if args.reduction_factor is not None and not args.reduction_factor > 1:
        raise ConfigError(f"--reduction-factor must be > 1, got {args.reduction_factor}")


def _objectives(spec: str) -> list[str]:
    """``--objective``: one or two names of ``OBJECTIVE_MODES``."""
    objective = [o.strip() for o in spec.split(",") if o.strip()]
    if not 1 <= len(objective) <= 2 or any(o not in OBJECTIVE_MODES for o in objective):
        raise ConfigError(f"--objective {spec!r}: give one or two of {', '.join(OBJECTIVE_MODES)}")
    return objective


def _sweep_name(name: str | None) -> str:
    """``--name``, or sweep-<date>-<time>; safe as a directory name."""
    name = name or f"sweep-{datetime.now():%Y%m%d-%H%M%S}"
    if not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def _resolve_plan(
    args: argparse.Namespace,
    name: str,
    params: list[SearchParam],
    hyper: list[SearchParam],
    settings: dict[str, Any],
    objective: list[str],
) -> tuple[Plan, Any]:
    """The part of :func:`make_plan` that imports the heavy libraries and reads files."""
    from berter.data.files import load_data_for

    directory = _new_directory(args.results, name)
    data_dir = _data_dir(args)
    grid = not params  # --search none
    budget = _budget(args, settings, demo=data_dir is None, grid=grid)
    base = _base_config(args, settings, data_dir, budget)
    searched_axes = [BY_NAME[p.name].field for p in params if p.kind == "axis"]
    variants = candidate_variants(args.variants, searched_axes, base)
    round_robin = not searched_axes
    wanted = budget.num_samples or len(variants)  # a grid: one trial per variant unless told
    notes = budget.notes + (_coverage_note(variants, wanted) if round_robin else [])
    hyper, num_samples, capped = _searched_ranges(hyper, args, base, variants, wanted)
    with data_warnings() as warned:
        data = load_data_for(base)
    max_t = _max_t(base, hyper, budget.epochs, variants)
    scheduler, switched = _scheduler(args.scheduler, objective, grid)
    plan = Plan(
        name=name,
        directory=directory,
        base=_jsonable(base.to_dict()),
        variants=[v.to_dict() for v in variants],
        search=[p.name for p in params],
        params=[asdict(p) for p in hyper],
        round_robin=round_robin,
        num_samples=num_samples,
        scheduler=scheduler,
        search_alg=args.search_alg,
        objective=objective,
        modes=[OBJECTIVE_MODES[o] for o in objective],
        max_t=max_t,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=_gpus_per_trial(args),
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        seed=base.seed,
        data_source=data.source,
        data_is_demo=data.is_demo,
        notes=notes + capped + warned + switched,
        created_at=datetime.now().isoformat(timespec="seconds"),
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        seeds=args.seeds,
        callbacks=list(args.callback or []),
        tracking=parse_tracking(args.tracking),
        keep_checkpoints=args.keep_checkpoints,
        speedup_examples=args.speedup_examples,
    )
    return plan, data


def _new_directory(results: str, name: str) -> str:
    """``<results>/<name>``: writable, and not holding a sweep already."""
    from berter.sweep.store import Store, check_writable, sweep_directory

    directory = sweep_directory(results, name)
    check_writable(directory)
    store = Store(directory)
    if store.exists(SWEEP_FILE) or store.exists(RAY_DIR) or store.exists("trials.parquet"):
        raise ConfigError(
            f"a sweep named {name!r} already exists in {directory}; "
            "continue it with --resume or choose another --name"
        )
    return directory


def _tasks(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(t for t in (args.tasks or ",".join(Config().tasks)).split(",") if t)


def _data_dir(args: argparse.Namespace) -> str | None:
    """--data-dir; None (the built-in demo set) for --data demo; else ./data when it holds
    every task's files, else None."""
    if args.data == "demo":
        return None
    if args.data_dir:
        return args.data_dir
    return _default_data_dir(_tasks(args))


def _default_data_dir(tasks: tuple[str, ...]) -> str | None:
    """./data when it holds every requested task, else None (the demo set)."""
    from berter.data.files import find_layout

    local = Path("data")
    if local.is_dir() and set(tasks) <= set(find_layout(local)):
        return str(local)
    return None


def _budget(
    args: argparse.Namespace, settings: dict[str, Any], demo: bool, grid: bool = False
) -> Budget:
    """Trials, epochs and training examples: the options, else small defaults on the demo set
    (a note names them) and the real-data ones otherwise. A grid (``--search none``) runs
    one trial per variant unless --num-samples says otherwise: ``num_samples`` 0."""
    defaults = DEMO_DEFAULTS if demo else {"num_samples": DEFAULT_NUM_SAMPLES}
    if grid:
        defaults = {**defaults, "num_samples": 0}
    given = {
        "num_samples": args.num_samples,
        "epochs": args.epochs or settings.get("epochs"),
        "max_train": args.max_train,
    }
    notes = []
    filled = {k: v for k, v in defaults.items() if given[k] is None and v}
    if demo and filled:
        shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in filled.items())
        notes.append(f"demo defaults: {shown} (pass them to change)")
    return Budget(
        num_samples=given["num_samples"] or defaults["num_samples"],  # 0: one per variant
        epochs=given["epochs"] or defaults.get("epochs") or Config().epochs,
        max_train=given["max_train"] or defaults.get("max_train"),
        notes=notes,
    )


def _base_config(
    args: argparse.Namespace, settings: dict[str, Any], data_dir: str | None, budget: Budget
) -> Config:
    """What every trial starts from: the --set values and the data, model and budget options."""
    values: dict[str, Any] = {
        **settings, "data_dir": data_dir, "tasks": _tasks(args), "epochs": budget.epochs,
        "max_train": budget.max_train,
    }  # fmt: skip
    for opt in ("max_dev", "max_len", "model", "seed"):
        if getattr(args, opt) is not None:
            values[opt] = getattr(args, opt)
    return Config.from_dict(values)


def _coverage_note(variants: list[Variant], num_samples: int) -> list[str]:
    """Round robin gives trial i variant i mod V: fewer trials than variants leave some out."""
    if len(variants) <= num_samples:
        return []
    return [
        f"only {num_samples} of the {len(variants)} variants get a trial; "
        f"--num-samples {len(variants)} runs each once"
    ]


def _searched_ranges(
    hyper: list[SearchParam],
    args: argparse.Namespace,
    base: Config,
    variants: list[Variant],
    num_samples: int,
) -> tuple[list[SearchParam], int, list[str]]:
    """The searched ranges (--epochs bounds a searched epochs, --range replaces a default),
    both ends of each checked to make a valid Config, and the trials capped at the number of
    configurations: training is seeded, so a configuration is never run twice."""
    from berter.variants import validate_axes

    hyper = apply_ranges(with_epoch_bound(hyper, args.epochs), args.range)
    notes = []
    size = space_size(SearchSpace(hyper, [v.name for v in variants]))
    if num_samples > size:
        notes.append(
            f"the search space has {size} configurations: {size} trials, not {num_samples} "
            "(--seeds N trains each with N seeds)"
        )
        num_samples = int(size)
    for p in hyper:
        for value in (p.low, p.high) if p.kind != "choice" else p.choices:
            try:
                validate_axes(variants[0].axes, base.replace(**{p.field: value}))
            except ConfigError as exc:
                raise ConfigError(
                    f"--search {p.name}: range value {value} is invalid: {exc}"
                ) from None
    return hyper, num_samples, notes


def _max_t(base: Config, hyper: list[SearchParam], epochs: int, variants: list[Variant]) -> int:
    """ASHA's max_t: the most main epochs a trial can run, with the backbone's depth (read
    here, so a bad --model fails before Ray runs anything)."""
    searched = [p.high for p in hyper if p.name == "epochs"]
    top = int(max(searched)) if searched else epochs
    num_layers = _check_model(base.model)
    return max(main_epochs(base.replace(**v.axes, epochs=top), num_layers) for v in variants)






def _scheduler(
    requested: str | None, objective: list[str], grid: bool = False
) -> tuple[str, list[str]]:
    """``--scheduler``; by default ASHA, but FIFO for a grid (``--search none``: every row
    runs all its epochs, so the table compares them at the same budget); FIFO for two
    objectives (ASHA ranks by one), with a note."""
    requested = requested or ("fifo" if grid else "asha")
    if len(objective) == 2 and requested == "asha":
        return "fifo", ["two objectives: ASHA is single-objective, using the FIFO scheduler"]
    return requested, []


def _gpus_per_trial(args: argparse.Namespace) -> float | None:
    """``--gpus-per-trial``; else, on a cluster, None: decided when the sweep joins it (from
    the GPU nodes it has and its autoscaler can add; they cannot be seen from here); else one
    GPU per trial when this machine has CUDA."""
    if args.gpus_per_trial is not None:
        return args.gpus_per_trial
    if args.address:
        return None
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ----------------------------------------------------------------------------- resume
def _latest_sweep(results: str) -> str:
    from berter.sweep.store import is_uri

    if is_uri(results):
        raise ConfigError("--resume with an s3:// / gs:// --results needs --name")
    root = Path(results).expanduser()
    found = sorted(root.glob(f"*/{SWEEP_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"nothing to resume: no sweep under {root}")
    return found[-1].parent.name


def resume_plan(args: argparse.Namespace) -> Plan:
    """The plan in sweep.json of ``--name`` (default: the latest sweep under ``--results``);
    an object store is first checked to take writes, as for a new sweep."""
    from berter.sweep.store import Store, check_writable, is_uri, sweep_directory

    name = args.name or _latest_sweep(args.results)
    directory = sweep_directory(args.results, name)
    if is_uri(directory):
        check_writable(directory)
    text = Store(directory).read_bytes(SWEEP_FILE)
    if text is None:
        raise ConfigError(
            f"nothing to resume: no sweep {name!r} under {args.results} (no {SWEEP_FILE})"
        )
    plan = Plan.from_json(text.decode())
    plan.directory = directory  # the results root may have moved
    return plan


# ----------------------------------------------------------------------------- helpers


