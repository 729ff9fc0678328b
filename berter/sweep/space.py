"""Search spaces: which hyperparameters and variant axes a sweep searches, and over what.

``SPACE`` is the one table of searchable names. Each entry maps a command-line name to a
``Config`` field and a range; its default is that field's default in ``Config`` (the single
source of truth), so a name that is not searched keeps the ``Config`` value. The help of
``sweeps/run.py`` is generated from this table.

Variants. A sweep runs over a list of *candidate variants* (points on the six technique
axes), chosen like this:

- ``--variants`` not given and no axis searched: the ``Config`` default variant only.
- ``--variants SPEC`` and no axis searched: exactly the variants SPEC selects, assigned to
  trials round-robin (trial i gets variant i mod V), so ``--num-samples`` >= V runs every
  variant at least once whatever the searcher does.
- an axis in ``--search`` (e.g. ``--search lr,exit``): the searcher picks the variant. The
  searched axes range over the values they take in the ``--variants`` selection (every
  registered value when ``--variants`` is not given); the other axes keep the values of a
  selected variant (``Config`` defaults when ``--variants`` is not given). Only valid
  combinations are candidates (``berter.variants.check``), so a trial never gets, say,
  ``strategy=final`` with an early-exit method.

The variant reaches the searcher as one categorical parameter, ``variant`` (its short name,
``berter.config.variant_name``), so Optuna's TPE models the score per variant and the space
stays valid by construction.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from berter.config import AXES, OPTIMIZERS, Config, parse_field
from berter.errors import ConfigError

if TYPE_CHECKING:  # berter.variants imports the exit methods (torch): not for --help
    from berter.variants import Variant

# The BERTer paper's best setting (section 5.2). ``Config`` differs on purpose for lr only:
# the packaged 6-layer MiniLM backbone learns too slowly at 1.3e-5 within a few epochs, so
# its default is a higher, measured value (see config.py); search ``lr`` around it.
PAPER_BEST = {"lr": 1.3e-5, "batch_size": 16, "dropout": 0.3, "epochs": 5}


@dataclass(frozen=True)
class SearchParam:
    """One searchable name: the Config field it sets and the distribution it is drawn from."""

    name: str
    field: str
    kind: str  # loguniform | uniform | int | choice | axis | fixed (--set only)
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    help: str = ""

    @property
    def default(self) -> Any:
        return {f.name: f.default for f in dataclasses.fields(Config)}[self.field]

    def describe(self) -> str:
        if self.kind == "axis":
            return "variant axis (see --variants)"
        if self.kind == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices)
        kind = {"loguniform": "log-uniform", "uniform": "uniform", "int": "integer"}[self.kind]
        return f"{kind} [{self.low:g}, {self.high:g}]"

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial (define-by-run)."""
        if self.kind == "loguniform":
            return trial.suggest_float(self.field, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.field, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.field, int(self.low), int(self.high))
        return trial.suggest_categorical(self.field, list(self.choices))


SPACE: tuple[SearchParam, ...] = (
    SearchParam("lr", "lr", "loguniform", 5e-6, 3e-4, help="peak learning rate"),
    SearchParam("batch", "batch_size", "choice", choices=(8, 16, 32), help="examples per batch"),
    SearchParam("dropout", "dropout", "uniform", 0.0, 0.5, help="hidden-state and head dropout"),
    SearchParam("epochs", "epochs", "int", 1, 8, help="epochs (at most --epochs if given)"),
    SearchParam("weight_decay", "weight_decay", "uniform", 0.0, 0.1, help="AdamW weight decay"),
    SearchParam("warmup", "warmup_ratio", "uniform", 0.0, 0.3, help="linear warmup fraction"),
    SearchParam("optimizer", "optimizer", "choice", choices=OPTIMIZERS, help="optimiser"),
    SearchParam("layer_decay", "layer_lr_decay", "uniform", 0.7, 1.0, help="layer-wise lr decay"),
    SearchParam("ema", "ema_decay", "choice", choices=(0.0, 0.999, 0.9995), help="weight EMA (0: off)"),
    SearchParam("distill", "exit_distill", "uniform", 0.0, 2.0, help="exit self-distillation weight"),
    SearchParam("smart_lambda", "smart_lambda", "loguniform", 0.1, 10.0, help="SMART term weight"),
    SearchParam("smart_step", "smart_step", "loguniform", 1e-4, 1e-2, help="SMART ascent step"),
    SearchParam("smart_eps", "smart_eps", "loguniform", 1e-6, 1e-4, help="SMART initial noise std"),
    SearchParam("cos_margin", "cos_margin", "uniform", 0.0, 0.5, help="cosine loss margin"),
    SearchParam("slf_fraction", "slf_fraction", "uniform", 0.25, 1.0, help="share of the SLF epoch"),
    SearchParam("lte_lr", "lte_lr", "loguniform", 1e-5, 1e-3, help="learning-to-exit module lr"),
    SearchParam("lambda_lr", "lambda_lr", "loguniform", 1e-5, 1e-3, help="Q-exit lambda layer lr"),
    SearchParam("patience", "patience", "int", 1, 4, help="patience exit: agreeing layers"),
    SearchParam("qexit_beta", "qexit_beta", "uniform", 0.1, 1.0, help="Q-exit KL weight"),
    SearchParam("qexit_q", "qexit_q", "uniform", 0.3, 0.7, help="Q-exit halting quantile"),
    SearchParam("smart", "smart", "axis", help="SMART regularisation"),
    SearchParam("cos_loss", "cos_loss", "axis", help="siamese cosine loss for pair tasks"),
    SearchParam("concat", "concat", "axis", help="pair concatenation order"),
    SearchParam("slf", "slf", "axis", help="Sequential Layer Focus"),
    SearchParam("strategy", "strategy", "axis", help="fine-tuning strategy"),
    SearchParam("exit", "exit_method", "axis", help="early-exit method"),
)
BY_NAME = {p.name: p for p in SPACE}
ALIASES = {
    "batch_size": "batch",
    "warmup_ratio": "warmup",
    "ema_decay": "ema",
    "layer_lr_decay": "layer_decay",
    "exit_distill": "distill",
    "cos": "cos_loss",
    "exit_method": "exit",
}


def space_help() -> str:
    """The table of searchable names for ``--help``: default, paper value, range."""
    lines = []
    for p in SPACE:
        default = (
            "per --variants"
            if p.kind == "axis"
            else f"{p.default:g}"
            if isinstance(p.default, float)
            else str(p.default)
        )
        paper = PAPER_BEST.get(p.field)
        note = f" (paper {paper:g})" if paper is not None and paper != p.default else ""
        lines.append(f"  {p.name:<13} {p.help:<34} default {default}{note}; {p.describe()}")
    return "\n".join(lines)


NO_SEARCH = "none"  # --search none: nothing searched, a grid of the --variants at fixed settings


def parse_search(spec: str) -> list[SearchParam]:
    """``"lr,batch,exit"`` -> the Params, in table order; ``"none"`` -> none (a plain grid of
    variants, every setting fixed); an unknown name is a ConfigError."""
    if spec.strip().lower() == NO_SEARCH:
        return []
    names = [ALIASES.get(n.strip(), n.strip()) for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ConfigError(
            f"unknown --search name(s): {', '.join(unknown)}; searchable: {', '.join(BY_NAME)} "
            f"(or {NO_SEARCH})"
        )
    if not names:
        raise ConfigError("--search is empty; name at least one of: " + ", ".join(BY_NAME))
    return [p for p in SPACE if p.name in names]


# Config fields that --set can fix although they are not searched. Left out: fields with an
# option of their own (--data-dir, --tasks, --model, --max-*, --seed), the variant axes
# (--variants), and what a trial decides itself (device, threads).
OWN_OPTION = {"data_dir", "tasks", "model", "max_train", "max_dev", "max_len", "seed"}
NOT_SETTABLE = {*OWN_OPTION, *AXES, "device", "num_threads"}
FIXED_ONLY: dict[str, dataclasses.Field] = {
    f.name: f
    for f in dataclasses.fields(Config)
    if f.name not in NOT_SETTABLE and f.name not in {p.field for p in SPACE}
}


def _settable(item: str, option: str) -> tuple[SearchParam, str]:
    """``"lr=2e-5"`` -> (the lr SearchParam, "2e-5"), for --set and --range."""
    name, sep, value = item.partition("=")
    name = ALIASES.get(name.strip(), name.strip())
    param = BY_NAME.get(name)
    if param is None and option == "--set" and name in FIXED_ONLY:
        param = SearchParam(name, name, "fixed")
    if not sep or param is None or param.kind == "axis" or not value.strip():
        names = [p.name for p in SPACE if p.kind != "axis"]
        if option == "--set":
            names += list(FIXED_ONLY)
        raise ConfigError(f"{option} {item!r}: give NAME=VALUE with NAME one of {', '.join(names)}")
    return param, value.strip()


def _typed(param: SearchParam, raw: str, option: str) -> Any:
    """A --set / --range value as the type of the Config field it sets."""
    try:
        return parse_field(param.field, raw)
    except ConfigError as exc:
        raise ConfigError(f"{option} {param.name}: {exc}") from None


def parse_settings(items: list[str] | None, searched: list[SearchParam]) -> dict[str, Any]:
    """``--set lr=2e-5 --set batch=32`` -> fixed Config values for every trial, validated.

    Besides the searchable names, any other plain Config field can be fixed
    (``--set task_order=proportional``, ``--set pooling=cls``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        param, raw = _settable(item, "--set")
        if param in searched:
            raise ConfigError(f"--set {param.name} conflicts with --search {param.name}")
        value = _typed(param, raw, "--set")
        try:
            Config().replace(**{param.field: value})
        except ConfigError as exc:
            raise ConfigError(f"--set {item}: {exc}") from None
        out[param.field] = value
    return out


def apply_ranges(params: list[SearchParam], items: list[str] | None) -> list[SearchParam]:
    """``--range lr=1e-5:1e-3 --range batch=8|16`` replaces searched names' default ranges."""
    by_name = {p.name: p for p in params}
    for item in items or []:
        param, raw = _settable(item, "--range")
        if param.name not in by_name:
            raise ConfigError(f"--range {param.name}: add {param.name} to --search to search it")
        if param.kind == "choice":
            choices = tuple(_typed(param, c.strip(), "--range") for c in raw.split("|"))
            by_name[param.name] = dataclasses.replace(param, choices=choices)
            continue
        low, sep, high = raw.partition(":")
        if not sep:
            raise ConfigError(f"--range {item!r}: give {param.name}=LOW:HIGH")
        lo, hi = _typed(param, low, "--range"), _typed(param, high, "--range")
        if not lo < hi:
            raise ConfigError(f"--range {item}: LOW must be below HIGH")
        if param.kind == "loguniform" and lo <= 0:
            raise ConfigError(f"--range {item}: a log-uniform range needs LOW > 0")
        by_name[param.name] = dataclasses.replace(param, low=lo, high=hi)
    return [by_name[p.name] for p in params]


def with_epoch_bound(params: list[SearchParam], max_epochs: int | None) -> list[SearchParam]:
    """A searched ``epochs`` ranges over [1, --epochs] when --epochs is given."""
    if max_epochs is None:
        return params
    return [
        dataclasses.replace(p, low=1, high=max_epochs) if p.name == "epochs" else p for p in params
    ]


# ----------------------------------------------------------------------------- variants
def _select(spec: str) -> list[Variant]:
    """``select_variants``, but a filter naming one invalid combination says why it is invalid
    (``strategy=final,exit=lte``: the conflict, not just "matches no variant")."""
    from berter.variants import parse_filter, select_variants, validate_axes

    try:
        return select_variants(spec)
    except ConfigError as exc:
        if "matches no variant" not in str(exc):
            raise
        wanted = parse_filter(spec)
        if all(len(v) == 1 for v in wanted.values()):
            axes = {a: getattr(Config(), a) for a in AXES}
            axes.update({k: next(iter(v)) for k, v in wanted.items()})
            try:
                validate_axes(axes)
            except ConfigError as why:
                raise ConfigError(f"{exc}: {why}") from None
        raise


def candidate_variants(spec: str | None, searched_axes: list[str], base: Config) -> list[Variant]:
    """The variants a sweep runs over (see the module docstring); each is valid with ``base``."""
    from berter.variants import all_variants, default_variant, validate_axes

    selected = _select(spec) if spec else [default_variant()]
    if not searched_axes:
        chosen = selected
    else:
        fixed = [a for a in AXES if a not in searched_axes]
        allowed = {a: {v.axes[a] for v in selected} for a in searched_axes} if spec else None
        keys = {tuple(v.axes[a] for a in fixed) for v in selected}
        chosen = [
            v
            for v in all_variants()
            if tuple(v.axes[a] for a in fixed) in keys
            and (allowed is None or all(v.axes[a] in allowed[a] for a in searched_axes))
        ]
    out, seen = [], set()
    for v in chosen:
        if v.name in seen:
            continue
        seen.add(v.name)
        try:
            validate_axes(v.axes, base)  # the cross-field checks too
        except ConfigError as exc:
            if not searched_axes:  # a variant the user asked for by name cannot run here
                raise ConfigError(f"variant {v.preset or v.name}: {exc}") from None
            continue  # searched combinations that conflict with the base config are left out
        out.append(v)
    if not out:
        raise ConfigError("no valid variant to search with these --variants and --search")
    return out


# ----------------------------------------------------------------------------- Optuna space
@dataclass
class SearchSpace:
    """Optuna define-by-run space: the variant (categorical), then the searched parameters.

    A plain picklable object, because Ray Tune saves the searcher with the experiment so an
    interrupted sweep can be resumed.
    """

    params: list[SearchParam]
    variants: list[str]  # candidate variant short names

    def __call__(self, trial: Any) -> None:
        trial.suggest_categorical("variant", list(self.variants))
        for p in self.params:
            p.suggest(trial)


def finite_points(space: SearchSpace) -> list[dict[str, Any]] | None:
    """Every configuration of a space with only categorical and integer parameters, by
    Optuna parameter name; None when some parameter is continuous."""
    axes: list[tuple[str, list[Any]]] = [("variant", list(space.variants))]
    for p in space.params:
        if p.kind in ("choice", "axis"):
            axes.append((p.field, list(p.choices)))
        elif p.kind == "int":
            axes.append((p.field, list(range(int(p.low), int(p.high) + 1))))
        else:
            return None
    names = [n for n, _ in axes]
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*(v for _, v in axes))
    ]


def config_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def space_size(space: SearchSpace) -> float:
    """Number of configurations (inf for a continuous space)."""
    points = finite_points(space)
    return math.inf if points is None else len(points)


def round_robin_points(variants: list[str], num_samples: int) -> list[dict[str, str]]:
    """Trial i is enqueued with variant i mod V: every variant runs once per V trials."""
    return [{"variant": variants[i % len(variants)]} for i in range(num_samples)]
