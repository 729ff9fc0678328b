"""The sweep driver behind ``python sweeps/run.py`` and ``berter sweep``.

Everything the user can get wrong (options, search names, variants, data, model, results
directory) is checked before any trial starts; a problem is one line on stderr and exit
status 2, with nothing written. A private local Ray instance is started while the config,
data and model are checked (both take seconds; a failed check shuts it down again,
silently); a cluster is joined after every check. Then it runs a ``tune.Tuner`` with Optuna's TPE
behind a ConcurrencyLimiter and ASHA, and keeps ``trials/epochs/exits.parquet`` current
through :class:`berter.results.ResultsWriter`.

Layout of one sweep, ``<results>/<name>/``: ``sweep.json`` (the resolved options; ``--resume``
reads it), the three Parquet files, and ``ray/`` (Ray Tune's experiment: trial directories,
checkpoints, searcher and scheduler state).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from berter.config import Config
from berter.errors import BerterError, ConfigError, RaisingArgumentParser, first_line
from berter.sweep.space import (
    BY_NAME,
    FIXED_ONLY,
    Param,
    SearchSpace,
    Variant,
    apply_ranges,
    candidate_variants,
    parse_search,
    parse_settings,
    round_robin_points,
    space_help,
    space_size,
    with_epoch_bound,
)

SWEEP_FILE = "sweep.json"
RAY_DIR = "ray"
DEMO_DEFAULTS = {"num_samples": 4, "epochs": 2, "max_train": 200}  # Quickstart: minutes on 2 cores
DEFAULT_NUM_SAMPLES = 16
SUMMARY_ROWS = 5
# Options that define a sweep; --resume takes them from sweep.json.
SWEEP_OPTIONS = (
    "search", "set", "range", "variants", "data_dir", "data", "tasks", "model", "num_samples",
    "epochs", "max_train", "max_dev", "max_len", "scheduler", "search_alg", "objective", "seed",
    "cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures", "grace_period",
    "reduction_factor",
)  # fmt: skip
OBJECTIVE_MODES = {
    "dev_score": "max",
    "dev_score_exit": "max",
    "avg_exit_layer": "min",
    "speedup_wall": "max",
}


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

Variants (--variants): "paper" (the twelve BERTer Table 2 rows), "all", a preset name, or a
filter such as "smart=para,exit=lte". Without --variants the Config default variant runs.
Without a variant axis in --search, trial i gets variant i mod V (so --num-samples V covers
all V). With an axis in --search the searcher picks it, among the values the --variants
selection allows (every value without --variants), other axes as selected.

Data: --data-dir DIR, or --data demo. Without either, ./data is used when it holds the task
files, else the built-in demo set, with the defaults --num-samples {DEMO_DEFAULTS["num_samples"]} --epochs {DEMO_DEFAULTS["epochs"]}
--max-train {DEMO_DEFAULTS["max_train"]} (a few minutes on 2 CPU cores).
On real data the defaults are --num-samples {DEFAULT_NUM_SAMPLES} and the Config epochs.

Scheduling: ASHA (grace period 1 epoch, max_t = the longest trial's epochs, reduction
factor 2 for runs of up to 4 epochs, else 3) stops weak trials early; its time axis counts
main epochs, so a Sequential Layer Focus warm-up epoch is not compared with full epochs of
other variants. A configuration is never run twice (training is seeded: it would report
the same scores), and trials ASHA stopped are told to Optuna as pruned. A two-objective
--objective uses FIFO (ASHA is single-objective) and prints the Pareto front.

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
        "--search", help="comma-separated names to search (see below), e.g. lr,batch,dropout"
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
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
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
        "--address", help="join a Ray cluster: auto (on the head node) or ray://host:10001"
    )
    p.add_argument("--seed", type=int, help="seed of the searcher and of every trial (default 0)")
    p.add_argument(
        "--max-failures",
        type=int,
        default=0,
        help="retries of a failed trial (a crash, a lost node), each from its last checkpoint",
    )
    return p  # fmt: skip


# ----------------------------------------------------------------------------- the plan
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
    gpus_per_trial: float
    max_concurrent: int | None
    max_failures: int
    seed: int
    data_source: str
    data_is_demo: bool
    notes: list[str] = field(default_factory=list)
    created_at: str = ""
    grace_period: int = 1  # ASHA
    reduction_factor: float | None = None  # ASHA; None: berter.searcher.reduction_factor

    @property
    def variant_objs(self) -> list[Variant]:
        return [Variant.from_dict(v) for v in self.variants]

    @property
    def param_objs(self) -> list[Param]:
        return [Param(**{**p, "choices": tuple(p["choices"])}) for p in self.params]

    @property
    def storage(self) -> str:
        return f"{self.directory}/{RAY_DIR}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**json.loads(text))


def _default_data_dir(tasks: tuple[str, ...]) -> str | None:
    """./data when it holds every requested task, else None (the demo set)."""
    from berter.data.files import find_layout

    local = Path("data")
    if local.is_dir() and set(tasks) <= set(find_layout(local)):
        return str(local)
    return None


def _check_model(model: str) -> int:
    """Load the backbone's config and tokenizer (cheap) so a bad --model fails before Ray."""
    from transformers import AutoConfig

    from berter.config import DEFAULT_MODEL
    from berter.data.encode import get_tokenizer, packaged_model_path

    path = packaged_model_path() if model == DEFAULT_MODEL else model
    looks_local = model.startswith((".", "/", "~")) or os.sep in model.strip("/")
    if model != DEFAULT_MODEL and looks_local and not Path(model).expanduser().is_dir():
        raise ConfigError(f"model directory {model} does not exist")
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise ConfigError(f"cannot load model {model!r}: {first_line(exc)}") from None
    if not hasattr(cfg, "num_hidden_layers"):
        raise ConfigError(f"model {model!r} is not a BERT-style encoder")
    get_tokenizer(model)
    return int(cfg.num_hidden_layers)


def main_epochs(cfg: Config, num_layers: int) -> int:
    """Epochs of a config outside a Sequential Layer Focus warm-up (the ASHA time axis).

    The strategy class decides (two_stage doubles the epochs; SLF's leading epoch is not
    counted) and checks that the backbone, less ``drop_top``, is deep enough. No model is
    built: the driver never imports transformers' modelling code (seconds before Ray's first
    trial can start), only the trials do.
    """
    from berter.config import layers_after_drop
    from berter.strategies import STRATEGIES

    strategy = STRATEGIES[cfg.strategy]
    strategy.check_layers(layers_after_drop(cfg, num_layers))
    return strategy.epochs_for(cfg)


def _results_dir(results: str, name: str) -> str:
    from berter.sweep.store import is_uri

    if is_uri(results):
        return results.rstrip("/") + "/" + name
    return str(Path(results).expanduser().resolve() / name)


def _check_writable(directory: str) -> None:
    from berter.sweep.store import is_uri

    if is_uri(directory):
        import pyarrow.fs as pafs

        try:
            pafs.FileSystem.from_uri(directory)
        except Exception as exc:
            raise ConfigError(f"results {directory}: {exc}") from None
        return
    path = Path(directory)
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"results directory {directory} is not writable ({probe})")


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
    from berter.sweep.store import Store

    name = args.name or _latest_sweep(args.results)
    directory = _results_dir(args.results, name)
    text = Store(directory).read_bytes(SWEEP_FILE)
    if text is None:
        raise ConfigError(
            f"nothing to resume: no sweep {name!r} under {args.results} (no {SWEEP_FILE})"
        )
    plan = Plan.from_json(text.decode())
    plan.directory = directory  # the results root may have moved
    return plan


def make_plan(
    args: argparse.Namespace, alongside: Callable[[], None] | None = None
) -> tuple[Plan, Any]:
    """Resolve and validate every option of a new sweep (and load its data); nothing is written.

    The options that need no imports are checked first; then ``alongside`` (the sweep starts
    Ray there) runs in this thread while the rest (config, variants, results directory, data,
    model: seconds of torch / transformers imports) is checked in another.
    """
    if not args.search:
        raise ConfigError("--search is required, e.g. --search lr,batch,dropout")
    params = parse_search(args.search)
    hyper = [p for p in params if p.kind != "axis"]
    settings = parse_settings(args.set, params)
    if "epochs" in settings and args.epochs is not None:
        raise ConfigError("--set epochs conflicts with --epochs; give one")
    for opt in ("num_samples", "epochs", "max_train", "max_dev", "max_len", "max_concurrent"):
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
    objective = [o.strip() for o in args.objective.split(",") if o.strip()]
    if not 1 <= len(objective) <= 2 or any(o not in OBJECTIVE_MODES for o in objective):
        raise ConfigError(
            f"--objective {args.objective!r}: give one or two of {', '.join(OBJECTIVE_MODES)}"
        )
    name = args.name or f"sweep-{datetime.now():%Y%m%d-%H%M%S}"
    if not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-'")
    return concurrently(
        lambda: _resolve_plan(args, name, params, hyper, settings, objective), alongside
    )


def _resolve_plan(
    args: argparse.Namespace,
    name: str,
    params: list[Param],
    hyper: list[Param],
    settings: dict[str, Any],
    objective: list[str],
) -> tuple[Plan, Any]:
    """The part of :func:`make_plan` that imports the heavy libraries and reads files."""
    from berter.data.files import load_data_for
    from berter.sweep.store import Store

    searched_axes = [BY_NAME[p.name].field for p in params if p.kind == "axis"]
    directory = _results_dir(args.results, name)
    _check_writable(directory)
    store = Store(directory)
    if store.exists(SWEEP_FILE) or store.exists(RAY_DIR) or store.exists("trials.parquet"):
        raise ConfigError(
            f"a sweep named {name!r} already exists in {directory}; "
            "continue it with --resume or choose another --name"
        )

    # data: explicit dir, demo, ./data when complete, else demo
    tasks = tuple(t for t in (args.tasks or ",".join(Config().tasks)).split(",") if t)
    if args.data == "demo":
        data_dir = None
    elif args.data_dir:
        data_dir = args.data_dir
    else:
        data_dir = _default_data_dir(tasks)
    is_demo = data_dir is None
    notes = []
    defaults = DEMO_DEFAULTS if is_demo else {"num_samples": DEFAULT_NUM_SAMPLES}
    num_samples = args.num_samples or defaults["num_samples"]
    epochs = args.epochs or settings.get("epochs") or defaults.get("epochs") or Config().epochs
    max_train = args.max_train or defaults.get("max_train")
    if is_demo:
        used = {
            "num-samples": args.num_samples,
            "epochs": args.epochs or settings.get("epochs"),
            "max-train": args.max_train,
        }
        filled = {k: v for k, v in DEMO_DEFAULTS.items() if used[k.replace("_", "-")] is None}
        if filled:
            shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in filled.items())
            notes.append(f"demo defaults: {shown} (pass them to change)")

    base_values: dict[str, Any] = {
        **settings, "data_dir": data_dir, "tasks": tasks, "epochs": epochs, "max_train": max_train,
    }  # fmt: skip
    for opt in ("max_dev", "max_len", "model", "seed"):
        if getattr(args, opt) is not None:
            base_values[opt] = getattr(args, opt)
    base = Config.from_dict(base_values)
    variants = candidate_variants(args.variants, searched_axes, base)
    round_robin = not searched_axes
    if round_robin and len(variants) > num_samples:
        notes.append(
            f"only {num_samples} of the {len(variants)} variants get a trial; "
            f"--num-samples {len(variants)} runs each once"
        )
    hyper = apply_ranges(with_epoch_bound(hyper, args.epochs), args.range)
    size = space_size(SearchSpace(hyper, [v.name for v in variants]))
    if num_samples > size:  # a configuration is never run twice
        notes.append(
            f"the search space has {size} configurations: {size} trials, not {num_samples}"
        )
        num_samples = int(size)
    for p in hyper:  # both ends of every searched range must make a valid Config
        for value in (p.low, p.high) if p.kind != "choice" else p.choices:
            try:
                base.replace(**variants[0].axes, **{p.field: value})
            except ConfigError as exc:
                raise ConfigError(
                    f"--search {p.name}: range value {value} is invalid: {exc}"
                ) from None

    with data_warnings() as warned:
        data = load_data_for(base)
    notes += warned
    top = (
        max(p.high for p in hyper if p.name == "epochs")
        if any(p.name == "epochs" for p in hyper)
        else epochs
    )
    num_layers = _check_model(base.model)
    max_t = max(main_epochs(base.replace(**v.axes, epochs=int(top)), num_layers) for v in variants)

    scheduler = args.scheduler
    if len(objective) == 2 and scheduler == "asha":
        scheduler = "fifo"
        notes.append("two objectives: ASHA is single-objective, using the FIFO scheduler")
    gpus = args.gpus_per_trial
    if gpus is None:
        import torch

        gpus = 1.0 if (torch.cuda.is_available() and not args.address) else 0.0

    return Plan(
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
        gpus_per_trial=gpus,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        seed=base.seed,
        data_source=data.source,
        data_is_demo=data.is_demo,
        notes=notes,
        created_at=datetime.now().isoformat(timespec="seconds"),
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
    ), data


def concurrently(work: Callable[[], Any], alongside: Callable[[], None] | None) -> Any:
    """``work()`` in a helper thread while ``alongside()`` runs in this one (Ray's start
    installs a signal handler, so it wants the main thread); returns ``work``'s value and
    raises its exception here, after both have finished."""
    if alongside is None:
        return work()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="berter-check") as pool:
        checked = pool.submit(work)
        alongside()
        return checked.result()


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if k != "test_fault"}


@contextlib.contextmanager
def data_warnings() -> Iterator[list[str]]:
    """Hold back the data loader's warnings (skipped rows) so that the first line of output
    is the data source; they are printed as notes right after it."""
    held: list[str] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record.getMessage())

    log = logging.getLogger("berter.data")
    handler, propagate = Hold(logging.WARNING), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield held
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


# ----------------------------------------------------------------------------- running
class TrialNamer:
    """Trial names and directories: the variant's short slug plus Ray's trial id."""

    def __init__(self, variants: list[Variant]):
        self.slugs = {v.name: v.slug for v in variants}

    def __call__(self, trial: Any) -> str:
        return f"{self.slugs.get(trial.config.get('variant'), 'trial')}_{trial.trial_id}"


def quiet_ray() -> None:
    """Our own progress lines replace Ray's tables; JSON/CSV trial logs stay, TensorBoard goes
    (it cannot log the exit tables and warns on every result)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def start_ray(address: str | None, quiet: bool = False) -> bool:
    """Join the cluster at ``address`` or start a private local instance; False when Ray was
    already running. ``quiet``: hold back Ray's start-up warnings (the sweep starts it before
    its last check, whose error must stay the only line)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    else:
        ray.init(  # "local": a private instance, never a cluster `ray start` left running here
            address="local",  # GPUs: Ray's own detection (no torch import in this thread)
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            logging_level=logging.ERROR if quiet else logging.WARNING,
        )
        logging.getLogger("ray").setLevel(logging.WARNING)
    return True


def default_concurrency(plan: Plan) -> int:
    """As many trials as the cluster's current CPUs/GPUs hold (at least one)."""
    import ray

    res = ray.cluster_resources()
    fits = int(res.get("CPU", 1) // plan.cpus_per_trial)
    if plan.gpus_per_trial > 0:
        fits = min(fits, int(res.get("GPU", 0) // plan.gpus_per_trial))
    return max(1, fits)


def build_tuner(
    plan: Plan, data: Any, extra_callbacks: list | None = None, resume: bool = False
) -> Any:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from berter.sweep.searcher import asha, make_searcher
    from berter.sweep.store import ResultsWriter
    from berter.sweep.trainable import FAULT_DIR, Sweep, trainable_with_resources

    variants = plan.variant_objs
    faults = injected_faults(plan)
    fault_dir = f"{plan.directory}/{FAULT_DIR}" if faults else None
    sweep = Sweep(plan.base, variants, faults=faults, fault_dir=fault_dir)
    trainable = trainable_with_resources(data, sweep, plan.cpus_per_trial, plan.gpus_per_trial)
    if resume:
        from ray.tune import Tuner

        return Tuner.restore(
            plan.storage, trainable=trainable, resume_unfinished=True, resume_errored=False
        )

    single = len(plan.objective) == 1
    metric = plan.objective[0] if single else plan.objective
    mode = plan.modes[0] if single else plan.modes
    names = [v.name for v in variants]
    searcher = make_searcher(
        plan.param_objs,
        names,
        algorithm=plan.search_alg,
        metric=metric,
        mode=mode,
        seed=plan.seed,
        num_samples=plan.num_samples,
        points_to_evaluate=round_robin_points(names, plan.num_samples)
        if plan.round_robin
        else None,
    )
    limit = plan.max_concurrent or default_concurrency(plan)
    if plan.scheduler == "asha":
        scheduler = asha(plan.max_t, plan.grace_period, plan.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    namer = TrialNamer(variants)
    writer = ResultsWriter(plan.directory, sweep, plan.name, plan.base["tasks"])
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=metric if single else None,
            mode=mode if single else None,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=limit),
            scheduler=scheduler,
            num_samples=plan.num_samples,
            reuse_actors=True,  # a warm worker (torch, tokenizer loaded) runs the next trial
            trial_name_creator=namer,
            trial_dirname_creator=namer,
        ),
        run_config=tune.RunConfig(
            name=RAY_DIR,
            storage_path=plan.directory,
            callbacks=[writer, JsonLoggerCallback(), CSVLoggerCallback(), *(extra_callbacks or [])],
            checkpoint_config=tune.CheckpointConfig(  # the trial asks for one per epoch
                num_to_keep=1,
                checkpoint_score_attribute="dev_score",
                checkpoint_score_order="max",
                checkpoint_at_end=False,  # not a diverged trial's weights
            ),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            verbose=0,
        ),
    )


def injected_faults(plan: Plan) -> tuple[str, ...]:
    """BERTER_TEST_FAULT's entries (test-only, see berter.trainable); they need a local results
    directory, where the trials claim them."""
    from berter.sweep.store import is_uri
    from berter.sweep.trainable import FAULT_ENV, faults_from_env

    faults = faults_from_env()
    if faults and is_uri(plan.directory):
        raise ConfigError(f"{FAULT_ENV} needs a local --results directory")
    return faults


def disk_usage(directory: str) -> int:
    """Bytes under a sweep's results directory (local or s3:// / gs://)."""
    from berter.sweep.store import Store

    store = Store(directory)
    if store.local is not None:
        files = (p for p in store.local.rglob("*") if p.is_file() and not p.is_symlink())
        return sum(p.stat().st_size for p in files)
    import pyarrow.fs as pafs

    infos = store.fs.get_file_info(pafs.FileSelector(store.path, recursive=True))
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def summary(plan: Plan) -> tuple[str, bool]:
    """The end-of-sweep text (best trials or Pareto front) and whether the sweep finished."""
    import pandas as pd

    from berter.sweep.store import pareto_front, read_results

    trials = read_results(plan.directory)["trials"]
    done = trials[trials.status.isin(["terminated", "stopped-early", "diverged", "error"])]
    finished = len(done) >= plan.num_samples
    lines = [f"{len(done)}/{plan.num_samples} trials finished: "
             + ", ".join(f"{n} {s}" for s, n in trials.status.value_counts().items())]  # fmt: skip
    ok = trials[trials.status.isin(["terminated", "stopped-early"])].dropna(subset=["dev_score"])
    cols = [
        "trial_name",
        "preset",
        "dev_score",
        "dev_score_exit",
        "avg_exit_layer",
        "best_epoch",
    ]
    cols += [BY_NAME[s].field for s in plan.search if BY_NAME[s].kind != "axis"]
    with pd.option_context(
        "display.width", 200, "display.max_columns", 20, "display.max_colwidth", 40
    ):
        if len(plan.objective) == 2 and len(ok):
            front = pareto_front(ok, plan.objective, plan.modes)
            lines.append(f"Pareto front ({' vs '.join(plan.objective)}):")
            lines.append(front[cols].to_string(index=False))
        elif len(ok):
            best = ok.sort_values(plan.objective[0], ascending=plan.modes[0] == "min").head(
                SUMMARY_ROWS
            )
            lines.append(f"best trials by {plan.objective[0]}:")
            lines.append(best[cols].to_string(index=False))
    lines.append(f"results: {plan.directory}/{{trials,epochs,exits}}.parquet")
    # one checkpoint per trial (two while the best epoch is not the latest): bounded on disk
    lines.append(f"disk: {human_bytes(disk_usage(plan.directory))} in {plan.directory}")
    if not finished:
        lines.append(f"unfinished; continue with: python sweeps/run.py --resume --name {plan.name}"
                     + (f" --results {Path(plan.directory).parent}" if "://" not in plan.directory else ""))  # fmt: skip
    return "\n".join(lines), finished


def run(
    plan: Plan, data: Any, *, resume: bool, address: str | None, callbacks: list | None = None
) -> int:
    from ray.tune import Tuner

    from berter.sweep.store import Store

    store = Store(plan.directory)
    restorable = resume and Tuner.can_restore(plan.storage)
    if resume and not restorable:
        print("resume: no Ray experiment state yet; starting the trials afresh")
    if not resume:
        store.write_bytes(SWEEP_FILE, plan.to_json().encode())
    quiet_ray()
    start_ray(address)
    tuner = build_tuner(plan, data, callbacks, resume=restorable)
    started = time.perf_counter()
    tuner.fit()
    text, finished = summary(plan)
    print(f"sweep {plan.name} took {time.perf_counter() - started:.0f}s")
    print(text)
    return 0 if finished else 1


def early_ray(started: list[bool]) -> Callable[[], None]:
    """Start the local Ray instance quietly (seconds, overlapped with the model check)."""

    def start() -> None:
        quiet_ray()
        if start_ray(None, quiet=True):
            started.append(True)

    return start


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
    print(
        f"{what} {plan.name}: {plan.num_samples} trials, {len(variants)} variant(s) ({shown}), "
        f"search {','.join(plan.search)}, {plan.search_alg}/{plan.scheduler}, "
        f"objective {','.join(plan.objective)}, epochs {plan.base['epochs']}"
    )
    sys.stdout.flush()


def main(
    argv: list[str] | None = None,
    *,
    prog: str = "python sweeps/run.py",
    callbacks: list | None = None,
) -> int:
    """Command-line entry point; ``callbacks`` are extra Tune callbacks (tests use them)."""
    parser = build_parser(prog)
    started: list[bool] = []  # whether this call started Ray (to stop it on a late error)
    try:
        args = parser.parse_args(argv)
        if args.resume:
            plan = resume_plan(args)
            ignored = [
                f"--{k.replace('_', '-')}"
                for k in SWEEP_OPTIONS
                if getattr(args, k) not in (None, parser.get_default(k))
            ]
            if ignored:
                plan.notes = [
                    f"--resume keeps the options in {SWEEP_FILE}; ignored: {' '.join(ignored)}"
                ]
            else:
                plan.notes = []
            from berter.data.files import load_data_for

            with data_warnings():  # already noted when the sweep started
                data = load_data_for(Config.from_dict(plan.base))
        else:
            plan, data = make_plan(args, alongside=None if args.address else early_ray(started))
        injected_faults(plan)
    except BerterError as exc:
        if started:  # nothing ran on it; the error stays the only output
            import ray

            ray.shutdown()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    announce(plan, args.resume)
    return run(plan, data, resume=args.resume, address=args.address, callbacks=callbacks)
