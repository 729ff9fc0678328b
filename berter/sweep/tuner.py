"""Run a planned sweep: Ray, the ``tune.Tuner`` and its callbacks, and the end-of-sweep summary.

A private local Ray instance is started while the plan is checked (:func:`early_ray`; a
failed check shuts it down again, silently); a cluster is joined after every check, and
what it has and can add then sets the GPU and concurrency defaults (berter.sweep.cluster),
before ``sweep.json`` is saved. The Tuner runs Optuna's TPE (berter.sweep.searcher) behind
a ConcurrencyLimiter and ASHA, and keeps ``trials/epochs/exits.parquet`` current through
:class:`berter.sweep.writer.ResultsWriter`; :class:`berter.sweep.retention.KeepCheckpoints`
trims each ended trial's checkpoints to what ``--keep-checkpoints`` says.

Layout of one sweep, ``<results>/<name>/``: ``sweep.json`` (the plan; ``--resume`` reads
it), the three Parquet files, and ``ray/`` (Ray Tune's experiment: trial directories,
checkpoints, searcher and scheduler state).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berter.errors import BerterError, first_line
from berter.sweep.plan import RAY_DIR, SWEEP_FILE, Plan
from berter.sweep.space import BY_NAME, round_robin_points

if TYPE_CHECKING:
    from berter.sweep.cluster import Cluster
    from berter.variants import Variant

SUMMARY_ROWS = 5


class TrialNamer:
    """Trial names and directories: the variant's short slug plus Ray's trial id."""

    def __init__(self, variants: list[Variant]):
        self.slugs = {v.name: v.slug for v in variants}

    def __call__(self, trial: Any) -> str:
        return f"{self.slugs.get(trial.config.get('variant'), 'trial')}_{trial.trial_id}"


def quiet_ray() -> None:
    """Our own progress (the results writer's lines, berter.sweep.progress's live view on a
    terminal) replaces Ray's tables; JSON/CSV trial logs stay, TensorBoard goes (it cannot log
    the exit tables and warns on every result)."""
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


def default_concurrency(plan: Plan, cluster: Cluster | None = None) -> int:
    """As many trials as the cluster holds at once, counting the workers its autoscaler can
    still add (berter.sweep.cluster), and no more than the sweep's trials."""
    from berter.sweep.cluster import read_cluster

    cluster = cluster or read_cluster()
    fit = cluster.trials_at_once(plan.cpus_per_trial, plan.gpus_per_trial or 0.0)
    return max(1, min(plan.num_samples, fit))


def size_for_cluster(plan: Plan) -> str:
    """On a joined cluster (``--address``): the GPU default (one per trial when a node has or
    the autoscaler can add a GPU; berter.sweep.plan leaves it open until now), and a note
    of what the cluster offers and what the sweep takes of it."""
    from berter.sweep.cluster import read_cluster

    cluster = read_cluster()
    if plan.gpus_per_trial is None:
        plan.gpus_per_trial = 1.0 if cluster.has_gpus() else 0.0
    at_once = plan.max_concurrent or default_concurrency(plan, cluster)
    gpus = f" {plan.gpus_per_trial:g} GPU" if plan.gpus_per_trial else " no GPU"
    return (
        f"cluster: {cluster.describe()}; per trial {plan.cpus_per_trial:g} CPU{gpus}, "
        f"up to {at_once} at once"
    )


def ray_storage(path: str) -> tuple[str, Any]:
    """Ray Tune's storage path and filesystem for a path of the sweep: for a URI the path
    inside the bucket and berter.objstore's filesystem, whose requests are bounded in time
    (Ray's own would wait minutes on an endpoint that does not answer); locally the path and
    None."""
    from berter.objstore import filesystem, is_uri

    if not is_uri(path):
        return path, None
    fs, inside = filesystem(path)
    return inside, fs


def build_tuner(
    plan: Plan,
    data: Any,
    extra_callbacks: list | None = None,
    resume: bool = False,
    retry_errored: bool = False,
) -> Any:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from berter.sweep import study
    from berter.sweep.progress import LiveProgress
    from berter.sweep.retention import KeepCheckpoints, checkpoint_config
    from berter.sweep.searcher import asha, make_searcher
    from berter.sweep.tracking import tracking_callbacks
    from berter.sweep.trainable import TrialSpec, trainable_with_resources
    from berter.sweep.writer import ResultsWriter

    variants = plan.variant_objs
    spec = TrialSpec(plan.base, variants, callbacks=tuple(plan.callbacks), seeds=plan.seeds,
                     speedup_examples=plan.speedup_examples)  # fmt: skip
    trainable = trainable_with_resources(data, spec, plan.cpus_per_trial, plan.gpus_per_trial)
    if resume:
        from ray.tune import Tuner

        path, fs = ray_storage(plan.storage)
        return Tuner.restore(  # errored trials: left as they are, or started again from scratch
            path, trainable=trainable, resume_unfinished=True, restart_errored=retry_errored,
            storage_filesystem=fs,
        )  # fmt: skip

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
        storage=study.storage(plan.directory),
        study_name=plan.name,
    )
    limit = plan.max_concurrent or default_concurrency(plan)
    if plan.scheduler == "asha":
        scheduler = asha(plan.max_t, plan.grace_period, plan.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    namer = TrialNamer(variants)
    keep = plan.keep_checkpoints
    writer = ResultsWriter(plan.directory, spec, plan.name, plan.base["tasks"], keep=keep)
    storage_path, storage_fs = ray_storage(plan.directory)
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
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            callbacks=[
                writer,
                LiveProgress(plan.name, plan.objective[0], plan.modes[0], plan.base["epochs"]),
                KeepCheckpoints(keep),
                JsonLoggerCallback(),
                CSVLoggerCallback(),
                *tracking_callbacks(plan.tracking, plan.name),
                *(extra_callbacks or []),
            ],
            checkpoint_config=checkpoint_config(keep),  # the trial asks for one per epoch
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            verbose=0,
        ),
    )


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


def configurations(runs: Any) -> Any:
    """One row per configuration (Tune trial) of a trials table: the mean over its runs of
    each float column, the first run's value of anything else (counts, names, the shared
    best epoch); the table itself when every configuration trained one seed."""
    import pandas as pd

    if runs.empty or runs["config_id"].is_unique:
        return runs
    agg = {
        c: "mean" if pd.api.types.is_float_dtype(runs[c]) else "first"
        for c in runs.columns
        if c != "config_id"
    }
    out = runs.groupby("config_id", sort=False).agg(agg).reset_index()
    out["trial_name"] = out["trial_name"].str.replace(r"-seed-?\d+$", "", regex=True)
    return out


def summary(plan: Plan) -> tuple[str, bool]:
    """The end-of-sweep text (best trials or Pareto front) and whether the sweep succeeded:
    every trial done and at least one finished with a score (a sweep whose every trial errored
    or diverged did not); with --seeds, per configuration (the mean over its seeds)."""
    import pandas as pd

    from berter.sweep.store import pareto_front, read_results

    trials = configurations(read_results(plan.directory)["trials"])
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
            of = f" (mean of {plan.seeds} seeds)" if plan.seeds > 1 else ""
            lines.append(f"best trials by {plan.objective[0]}{of}:")
            lines.append(best[cols].to_string(index=False))
    failed = {s: int((trials.status == s).sum()) for s in ("error", "diverged")}
    if any(failed.values()):
        lines.append(f"failed: {failed['error']} errored, {failed['diverged']} diverged"
                     + (f"; retry the errored with: python sweeps/run.py --resume --retry-errored"
                        f" --name {plan.name}" if failed["error"] else ""))  # fmt: skip
    if not len(ok):
        lines.append("no trial finished with a score")
    lines.append(f"results: {plan.directory}/{{trials,epochs,exits}}.parquet")
    # an ended trial keeps one checkpoint without optimiser state (--keep-checkpoints)
    lines.append(f"disk: {human_bytes(disk_usage(plan.directory))} in {plan.directory}")
    if not finished:
        lines.append(f"unfinished; continue with: python sweeps/run.py --resume --name {plan.name}"
                     + f" --results {results_root(plan.directory)}")  # fmt: skip
    return "\n".join(lines), finished and len(ok) > 0


def results_root(directory: str) -> str:
    """The ``--results`` root of a sweep directory (a local path or a URI)."""
    if "://" in directory:
        return directory.rstrip("/").rsplit("/", 1)[0]
    return str(Path(directory).parent)


def run(
    plan: Plan,
    data: Any,
    *,
    resume: bool,
    address: str | None,
    callbacks: list | None = None,
    retry_errored: bool = False,
) -> int:
    """Run (or resume) the sweep; exit status 0 when it succeeded (``summary``), else 1."""
    from ray.tune import Tuner

    from berter.sweep.store import Store

    store = Store(plan.directory)
    restorable = resume and Tuner.can_restore(*ray_storage(plan.storage))
    if resume and not restorable:
        print("resume: no Ray experiment state yet; starting the trials afresh")
    quiet_ray()
    start_ray(address)
    if address:
        print(size_for_cluster(plan), flush=True)
    if not resume:
        store.write_bytes(SWEEP_FILE, plan.to_json().encode())
    tuner = build_tuner(plan, data, callbacks, resume=restorable, retry_errored=retry_errored)
    from berter.sweep.study import publish

    started = time.perf_counter()
    try:
        tuner.fit()
        print(f"sweep {plan.name} took {time.perf_counter() - started:.0f}s")
        publish(plan.directory)
        text, finished = summary(plan)
    except (OSError, BerterError) as exc:  # the store went away: what it holds is kept
        print(f"error: cannot reach the results at {plan.directory}: {first_line(exc)}; "
              f"once it is back, continue with: python sweeps/run.py --resume --name "
              f"{plan.name} --results {results_root(plan.directory)}", file=sys.stderr)  # fmt: skip
        return 1
    print(text)
    return 0 if finished else 1


def early_ray(started: list[bool]) -> Callable[[], None]:
    """Start the local Ray instance quietly (seconds, overlapped with the model check)."""

    def start() -> None:
        quiet_ray()
        if start_ray(None, quiet=True):
            started.append(True)

    return start
