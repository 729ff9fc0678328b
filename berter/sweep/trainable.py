"""The Ray Tune trainable: one trial = one variant + hyperparameters, epoch by epoch.

A trial trains its configuration's seeds (one, or ``--seeds N``: berter.sweep.seeds) in
lockstep and reports their mean, with each seed's own result beside it.

The driver loads and validates the data once and hands it to every trial through
``tune.with_parameters`` (one copy in the object store, not one read per trial), together
with the :class:`TrialSpec` that says how a trial config becomes a ``Config``.

After every epoch the trial reports the dev score, the per-task metrics, the early-exit
operating point and a checkpoint (``TrainingRun.state_dict()``), so ASHA can stop it at any
epoch and a restarted trial resumes after its last finished epoch. What only a resume reads
(the optimiser, its schedule, the raw weights behind a weight average) goes in a file of its
own, ``optimizer.pt``, which berter.sweep.retention deletes once the trial has ended. A non-finite training
loss ends the trial with ``diverged=True`` in its last result; any exception marks the trial
as errored with its message.

The sweep's ``--callback`` classes (``TrialSpec.callbacks``, berter.train.callbacks) are
imported and built here, in the trial's process, once per trial start; the run tells them
its trial id (``run.trial_id``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from berter.config import Config
from berter.train.averaging import WeightAveraging
from berter.variants import Variant

CHECKPOINT_FILE = "state.pt"
# resume-only state (AdamW's two moments: twice the weights); a trial that ended drops it
OPTIMIZER_FILE = "optimizer.pt"
RESUME_ONLY = ("optimizer", "scheduler", WeightAveraging.state_key)  # the entries it holds
META_FILE = "trial.json"


@dataclass
class TrialSpec:
    """How a trial's config becomes a ``Config``: what every trial of a sweep shares (the base
    config and the candidate variants)."""

    base: dict[str, Any]  # Config fields (not searched)
    variants: list[Variant]
    speedup_examples: int = 64  # dev examples per task timed for speedup_wall; 0: not timed
    seeds: int = 1  # training runs per configuration: seed, seed + 1, ... (berter.sweep.seeds)
    callbacks: tuple[str, ...] = ()  # TrainerCallback classes by dotted path (--callback)
    by_name: dict[str, Variant] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {v.name: v for v in self.variants}

    def variant_of(self, trial_config: dict[str, Any]) -> Variant:
        name = trial_config.get("variant", self.variants[0].name)
        if name not in self.by_name:
            raise KeyError(f"trial config names an unknown variant {name!r}")
        return self.by_name[name]

    def run_seeds(self) -> list[int]:
        """The training seeds of every configuration of the sweep."""
        from berter.sweep.seeds import seeds_of

        return seeds_of(int(self.base.get("seed", Config.seed)), self.seeds)

    def resolve(self, trial_config: dict[str, Any]) -> Config:
        """Base config + the trial's variant axes + its sampled hyperparameters, validated."""
        values = {**self.base, **self.variant_of(trial_config).axes}
        values.update({k: v for k, v in trial_config.items() if k != "variant"})
        return Config.from_dict(values)


# ----------------------------------------------------------------------------- checkpoints
def to_plain(obj: Any, where: str = "state") -> Any:
    """Make a state dict loadable with ``torch.load(weights_only=True)``.

    numpy scalars become Python numbers and arrays become tensors; anything else that is not
    a tensor, container or primitive is an error naming where it sits, because it would make
    the checkpoint unloadable only at resume time.
    """
    if isinstance(obj, np.generic):  # before the primitives: np.float64 is a float subclass
        return obj.item()
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, torch.Size):
        return list(obj)
    raise TypeError(f"{where}: {type(obj).__name__} cannot go into a weights_only checkpoint")


def save_checkpoint(
    run: Any,
    directory: str | Path,
    meta: dict[str, Any],
    thresholds: dict[str, Any] | None = None,
    optimizer: bool = True,
) -> None:
    """The TrainingRun state to resume from, plus the inference files (berter.infer's format
    minus model.pt, whose weights are in the state), so ``berter infer`` runs on a trial's
    checkpoint as it is; ``thresholds`` are the epoch's calibrated operating params.

    The entries only a resume reads (``RESUME_ONLY``: the optimiser and its schedule, the raw
    weights behind a weight average) go to ``OPTIMIZER_FILE`` beside ``state.pt``, so that a
    trial that has ended can drop them by deleting one file (berter.sweep.retention).
    ``optimizer=False`` leaves that file out: a checkpoint of the last epoch is only ever
    read for its (evaluated) weights."""
    from berter.checkpoint import save_model

    directory = Path(directory)
    state = run.state_dict()
    resume = {k: state.get(k) for k in RESUME_ONLY}
    state.update(dict.fromkeys(RESUME_ONLY))
    torch.save(to_plain(state), directory / CHECKPOINT_FILE)
    if optimizer and any(v is not None for v in resume.values()):
        torch.save(to_plain(resume), directory / OPTIMIZER_FILE)
    (directory / META_FILE).write_text(json.dumps(meta))
    if thresholds is None:
        thresholds = dict.fromkeys(run.cfg.tasks)
    save_model(run, directory, thresholds, weights=False)


def load_checkpoint(run: Any, directory: str | Path) -> dict[str, Any]:
    """Restore a run from a checkpoint directory, with its optimiser state where the
    directory still has it (a trial that ended has none and is not trained further)."""
    directory = Path(directory)
    state = torch.load(directory / CHECKPOINT_FILE, map_location=run.device, weights_only=True)
    resume = directory / OPTIMIZER_FILE
    if resume.is_file():
        state.update(torch.load(resume, map_location=run.device, weights_only=True))
    if "torch_rng" in state:  # the CPU generator state must live on the CPU
        state["torch_rng"] = state["torch_rng"].cpu()
    run.load_state_dict(state)
    meta = directory / META_FILE
    return json.loads(meta.read_text()) if meta.exists() else {}


# ----------------------------------------------------------------------------- results
def epoch_result(run: Any, report: Any, num_epochs: int) -> dict[str, Any]:
    """The flat dict one epoch reports to Tune (and that becomes one epochs.parquet row)."""
    metrics = dict(report.metrics)
    return {
        **metrics,
        "epoch": report.epoch,
        # epochs outside a Sequential Layer Focus warm-up: ASHA's time axis, so a partial
        # one-layer-at-a-time epoch is not ranked against other variants' full epochs
        "main_epoch": sum(1 for e in range(report.epoch) if run.strategy.epoch_phase(e) != "slf"),
        "epochs_planned": num_epochs,
        "phase": report.phase,
        "train_loss": report.train_loss,
        "epoch_seconds": report.epoch_seconds,
        "train_seconds": report.train_seconds,
        "num_layers": run.model.num_layers,
        "diverged": bool(metrics.get("diverged", False)),
    }


def trial_speedup(run: Any, threads: int, examples: int) -> dict[str, float]:
    """Wall-clock early-exit speedup (batch 1 and 32) on capped dev examples, via berter.infer.

    Skipped for ``exit_method=none``: its early-exit path is the full model, speedup 1.
    """
    if run.cfg.exit_method == "none":
        return {"speedup_wall": 1.0, "speedup_wall_b32": 1.0}
    from berter.exits.engine import speed_metrics

    row = speed_metrics(run, max_examples=examples, threads=threads, repeats=2)
    return {k: float(row[k]) for k in ("speedup_wall", "speedup_wall_b32") if k in row}


def trial_device(trainable: Any) -> tuple[str, int]:
    """The device Ray gave this trial, and its CPU count (for torch's thread pool); outside
    Tune (a trainable stepped by hand) one CPU. A trial holding a GPU trains on it or not at
    all: where torch sees no CUDA (a CPU build of torch, a missing driver) it stops with
    :class:`NoCudaError`, never training on the CPU of a GPU node at a fraction of the speed."""
    import ray

    resources = getattr(getattr(trainable, "trial_resources", None), "required_resources", {})
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = ray.get_gpu_ids() if ray.is_initialized() else []
    if not gpus:
        return "cpu", cpus
    if not torch.cuda.is_available():
        raise NoCudaError(gpus)
    return "cuda", cpus


class NoCudaError(RuntimeError):
    """A trial holds a GPU but torch on its node cannot use CUDA (one line: the trial's error)."""

    def __init__(self, gpus: list[Any]):
        built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
        super().__init__(
            f"this trial holds GPU {','.join(map(str, gpus))} on {platform.node()}, but torch "
            f"{torch.__version__} ({built}) sees no CUDA device; install torch's CUDA build "
            "and the NVIDIA driver on the GPU workers, or sweep with --gpus-per-trial 0"
        )


def json_safe(obj: Any) -> Any:
    """A reported result as JSON can hold it (numpy scalars as numbers, anything else as text)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# ----------------------------------------------------------------------------- trainable
class Trial(tune.Trainable):
    """The Ray Tune trainable: ``step()`` trains and evaluates one epoch.

    A class trainable rather than a function one because Tune runs ``step()`` on the worker's
    main thread, where torch's CPU kernels run about 20% faster than on the second thread a
    function trainable gets (benchmarks/trial_thread.py). Wrap it with
    ``tune.with_parameters(Trial, data=..., spec=...)`` (see ``trainable_with_resources``).
    With ``reuse_actors`` a worker keeps its imports and tokenizer and ``reset_config`` builds
    the next trial's runs in place.
    """

    def setup(
        self, config: dict[str, Any], data: Any = None, spec: TrialSpec | None = None
    ) -> None:
        logging.getLogger("ray").setLevel(logging.WARNING)  # no "checkpoint created" per epoch
        self.data, self.spec = data, spec
        self.start(config)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self.release()
        self.start(new_config)
        return True

    def release(self) -> None:
        """Free the finished trial's runs (model, optimiser, encoded data) before the next
        one's are built, so that a reused worker never holds two trials' runs at once."""
        self.group = self.report = None
        gc.collect()

    def cleanup(self) -> None:
        self.release()

    def start(self, config: dict[str, Any]) -> None:
        """Build this trial's TrainingRuns, one per seed (model, encoded data, optimiser to come)."""
        from berter.sweep.seeds import SeedGroup

        self.setup_started = time.perf_counter()
        spec = self.spec
        cfg = spec.resolve(config)
        self.device, self.cpus = trial_device(self)
        if self.device == "cpu":
            cfg = dataclasses.replace(cfg, num_threads=self.cpus)
            torch.set_num_threads(self.cpus)
        self.group = SeedGroup(
            cfg,
            self.data,
            spec.seeds,
            device=self.device,
            callbacks=spec.callbacks,
            trial_id=self.trial_id,
        )
        # a resumed trial keeps its first start's time (load_checkpoint overwrites it)
        self.meta: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat()}
        variant = spec.variant_of(config)
        self.info: dict[str, Any] = {
            "variant": variant.name,
            "preset": variant.preset,
            "data_source": self.group.runs[0].data.source,
            "model": cfg.model,
        }
        self.setup_seconds: float | None = None
        self.report: Any = None

    def step(self) -> dict[str, Any]:
        group = self.group
        if self.setup_seconds is None:  # model, data encoding, checkpoint restore
            self.setup_seconds = time.perf_counter() - self.setup_started
        if group.finished:  # restored from the final epoch's checkpoint: nothing left to train
            return {**self.meta.get("result", {}), "done": True}
        result = group.step(self.train_epoch)
        if result["diverged"]:  # no checkpoint of non-finite weights
            return {**result, "done": True}
        if group.finished:  # what a restore from this (last) epoch's checkpoint reports
            self.meta["result"] = json_safe(result)
        return {**result, "should_checkpoint": True, "done": group.finished}

    def train_epoch(self, run: Any) -> dict[str, Any]:
        """One epoch of one seed's run: its result, with the speedup after its last epoch."""
        self.report = report = run.next_epoch()
        result = {
            **epoch_result(run, report, run.strategy.num_epochs),
            **self.info,
            "seed": run.cfg.seed,
            "started_at": self.meta["started_at"],
            "setup_seconds": self.setup_seconds,
        }
        if run.finished and not result["diverged"] and self.spec.speedup_examples:
            started = time.perf_counter()
            try:
                threads = self.cpus if self.device == "cpu" else None
                result.update(trial_speedup(run, threads, self.spec.speedup_examples))
            except Exception as exc:  # a timing failure must not discard a trained trial
                logging.getLogger(__name__).warning("speedup not measured: %s", exc)
            result["speedup_seconds"] = time.perf_counter() - started
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        from berter.exits.calibration import thresholds_from_metrics

        meta = {**self.meta, "epoch": self.group.epoch}
        for run, directory in self.group.directories(checkpoint_dir):
            thresholds = thresholds_from_metrics(run.history[-1].metrics, list(run.cfg.tasks))
            # the last epoch's checkpoint is read only for its weights: no optimiser state
            save_checkpoint(run, directory, meta, thresholds, optimizer=not run.finished)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        for run, directory in self.group.directories(checkpoint_dir):
            self.meta.update(load_checkpoint(run, directory))


def trainable_with_resources(data: Any, spec: TrialSpec, cpus: float, gpus: float) -> Any:
    """``Trial`` bound to the shared data and trial spec, with per-trial resources."""
    bound = tune.with_parameters(Trial, data=data, spec=spec)
    return tune.with_resources(bound, {"cpu": cpus, "gpu": gpus})
