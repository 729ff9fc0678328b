"""Variants: named points on the six technique axes, the BERTer paper's presets, and selection.

A :class:`Variant` is a value on each axis of ``berter.config.AXES`` (smart, cos_loss,
concat, slf, strategy, exit_method) and, when it is a row of the paper's Table 2, that row's
name (``preset``); the sweep, its trials and its results use this one type. Strategies and
exit methods are read from their registries, so a new one shows up in :func:`all_variants`
and in filters as soon as it is registered.

Mapping of the paper's Table 2 rows (section 4) to axes, and why:
- "Early Exiting" is the hybrid exit method ``berter`` (confidence threshold for
  classification, learning-to-exit for regression, section 3.3). Early exiting needs trained
  intermediate exits, and the paper builds it on BERxiT, so those rows use BERxiT's
  ``alternating`` strategy unless the row names another one.
- "Full SMART" is SMART on all three tasks (``smart=all``). Rows 1-4 (Baseline, Full SMART,
  Early Exiting, Full SMART + Early Exiting) are SMART {off, all} x early exit {off, on} and
  stay so. After them the paper kept SMART for paraphrase only (section 3.2: "We applied
  SMART regularization across all three tasks but observed a positive accuracy change only
  for paraphrase detection. [...] Nevertheless, we continued to employ SMART exclusively for
  paraphrase detection."), and section 5.1 credits the best rows, all SLF rows, to SMART:
  "The combination of SMART and SLF techniques yielded the best overall performance across
  our training sets." So rows 5-12 use ``smart=para`` although their names do not say SMART
  ("Smart Alt" is the Smart Alternating strategy, a separate axis).
- Rows without "Conc Before Embed" use the paper's default order, ``concat=after_embed``.
- "SLF" rows without "Smart Alt" use ``joint`` for the stage after Sequential Focus: the paper
  defines SLF's second stage, Global Refinement, as jointly fine-tuning all layers and
  classifiers. With "Smart Alt", that stage is ``smart_alt``.
- "Baseline" is plain fine-tuning: strategy ``final``, no early exit.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from berter.config import (
    AXES,
    CONCAT_VALUES,
    COS_VALUES,
    SLF_VALUES,
    SMART_VALUES,
    Config,
    variant_name,
)
from berter.errors import ConfigError
from berter.exits.base import EXIT_METHODS
from berter.strategies import STRATEGIES
from berter.tasks import TASKS

EARLY_EXIT = "berter"  # the hybrid exit method (confidence + LTE), registered in berter.exits

BASE_AXES: dict[str, str] = {
    "smart": "off",
    "cos_loss": "off",
    "concat": "after_embed",
    "slf": "off",
    "strategy": "final",
    "exit_method": "none",
}


def _row(**axes: str) -> dict[str, str]:
    return {**BASE_AXES, **axes}


_EE = {"strategy": "alternating", "exit_method": EARLY_EXIT}
_SLF = {"slf": "on", "strategy": "joint"}
_SLF_ALT = {"slf": "on", "strategy": "smart_alt"}
_PARA = {"smart": "para"}  # rows 5-12: SMART on paraphrase only (module docstring)

# Table 2 of the BERTer paper, in its order: row name -> axis values.
PAPER_PRESETS: dict[str, dict[str, str]] = {
    "Baseline": _row(),
    "Full SMART": _row(smart="all"),
    "Early Exiting": _row(**_EE),
    "Full SMART + Early Exiting": _row(smart="all", **_EE),
    "Conc Before Embed + Early Exit": _row(**_PARA, concat="before_embed", **_EE),
    "Cos Loss + Early Exiting": _row(**_PARA, cos_loss="on", **_EE),
    "SLF": _row(**_PARA, **_SLF),
    "SLF + Early Exiting": _row(**_PARA, **_SLF, exit_method=EARLY_EXIT),
    "SLF + Conc Before Embed": _row(**_PARA, **_SLF, concat="before_embed"),
    "SLF + Smart Alt": _row(**_PARA, **_SLF_ALT),
    "SLF + Smart Alt + Early Exit": _row(**_PARA, **_SLF_ALT, exit_method=EARLY_EXIT),
    "SLF + Smart Alt + Early Exit + Cos Loss": _row(
        **_PARA, **_SLF_ALT, exit_method=EARLY_EXIT, cos_loss="on"
    ),
}


def _table2(dev: float, sst: float, para: float, sts: float, hhmm: str) -> dict[str, Any]:
    hours, minutes = hhmm.split(":")
    return {
        "dev_score": dev,
        "sst_acc": sst,
        "para_acc": para,
        "sts_corr": sts,
        "train_minutes": 60 * int(hours) + int(minutes),
    }


# The paper's reported dev results (12-layer BERT-base, full data, NVIDIA T4), as printed.
# STS is the Pearson r and the stated formula is dev_score = (SST + Para + (STS + 1) / 2) / 3;
# it reproduces the printed dev score for six rows, but for Early Exiting, Conc Before Embed +
# Early Exit, SLF, SLF + Early Exiting, SLF + Conc Before Embed and SLF + Smart Alt the printed
# dev score is 0.01-0.09 below the formula applied to the printed task columns. Compare task
# columns when in doubt.
PAPER_TABLE2: dict[str, dict[str, Any]] = {
    "Baseline": _table2(0.428, 0.314, 0.369, 0.199, "15:36"),
    "Full SMART": _table2(0.433, 0.253, 0.485, 0.123, "15:57"),
    "Early Exiting": _table2(0.476, 0.313, 0.768, 0.184, "13:36"),
    "Full SMART + Early Exiting": _table2(0.482, 0.253, 0.632, 0.123, "13:47"),
    "Conc Before Embed + Early Exit": _table2(0.595, 0.520, 0.625, 0.792, "13:49"),
    "Cos Loss + Early Exiting": _table2(0.585, 0.501, 0.368, 0.771, "04:20"),
    "SLF": _table2(0.592, 0.505, 0.640, 0.721, "12:53"),
    "SLF + Early Exiting": _table2(0.650, 0.544, 0.658, 0.740, "11:47"),
    "SLF + Conc Before Embed": _table2(0.671, 0.523, 0.651, 0.801, "12:14"),
    "SLF + Smart Alt": _table2(0.676, 0.545, 0.614, 0.790, "13:54"),
    "SLF + Smart Alt + Early Exit": _table2(0.683, 0.510, 0.632, 0.818, "10:41"),
    "SLF + Smart Alt + Early Exit + Cos Loss": _table2(0.679, 0.510, 0.604, 0.818, "05:43"),
}

# Filter keys: the axis names plus short aliases.
ALIASES = {"cos": "cos_loss", "exit": "exit_method"}
# Short concat values, as printed by ``variant_name``.
CONCAT_SHORT = {"before": "before_embed", "after": "after_embed"}


def slug(name: str) -> str:
    """Normalised preset name: "SLF + Smart Alt" -> "slf+smart_alt"."""
    s = re.sub(r"\s*\+\s*", "+", name.strip().lower())
    return re.sub(r"[\s\-]+", "_", s)


PRESET_BY_SLUG = {slug(name): name for name in PAPER_PRESETS}


@dataclass(frozen=True)
class Variant:
    """A point on the six axes, and the paper row it is (``preset``), if it is one."""

    axes: dict[str, str]  # exactly the AXES, in their order
    preset: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", {k: self.axes[k] for k in AXES})

    @property
    def name(self) -> str:
        """The stable short name: the ``variant`` column and the searcher's choice."""
        return variant_name(self.axes)

    @property
    def slug(self) -> str:
        """Filesystem- and terminal-friendly name (trial names): the paper row, or the axes
        that differ from ``Config``'s defaults."""
        if self.preset:
            return slug(self.preset).replace("+", "-")
        defaults = Config()
        parts = [
            f"{k.replace('_method', '')}-{v.replace('_embed', '')}"
            for k, v in self.axes.items()
            if getattr(defaults, k) != v
        ]
        return "_".join(parts) or "default"

    def to_dict(self) -> dict[str, Any]:
        """For sweep.json."""
        return {"axes": dict(self.axes), "preset": self.preset}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Variant:
        return cls(dict(d["axes"]), d.get("preset"))

    @classmethod
    def of(cls, axes: dict[str, str]) -> Variant:
        """The variant with these axes, tagged with its paper row if it is one."""
        return cls(axes, preset_of(axes))


def default_variant() -> Variant:
    """``Config``'s default axes."""
    return Variant.of({k: getattr(Config(), k) for k in AXES})


def axis_values() -> dict[str, list[str]]:
    """Allowed values of every axis, strategies and exit methods from their registries."""
    return {
        "smart": list(SMART_VALUES),
        "cos_loss": list(COS_VALUES),
        "concat": list(CONCAT_VALUES),
        "slf": list(SLF_VALUES),
        "strategy": list(STRATEGIES),
        "exit_method": list(EXIT_METHODS),
    }


def check(cfg: Config) -> Config:
    """Reject a config whose fields conflict, or whose strategy or exit method is not registered.

    ``Config.validate`` checks each field alone; this is the check across fields, run wherever
    a config becomes a run (``TrainingRun``, the sweep's plan, ``apply_variant``). Returns
    ``cfg`` so that it reads as ``run(check(cfg))``.
    """
    strategy = STRATEGIES.get_class(cfg.strategy)
    EXIT_METHODS.get_class(cfg.exit_method)
    if cfg.strategy == "final" and cfg.exit_method != "none":
        raise ConfigError(
            f"exit_method={cfg.exit_method} conflicts with strategy=final: "
            "intermediate exit heads would be untrained"
        )
    if cfg.smart == "para" and "para" not in cfg.tasks:
        raise ConfigError("smart=para needs the para task in tasks")
    if cfg.cos_loss == "on" and cfg.concat == "before_embed":
        raise ConfigError(
            "concat=before_embed conflicts with cos_loss=on: "
            "siamese pairs are encoded separately, never concatenated"
        )
    known = [TASKS[t] for t in cfg.tasks if t in TASKS]
    if cfg.cos_loss == "on" and known and not any(t.is_pair for t in known):
        raise ConfigError("cos_loss=on needs a sentence-pair task (e.g. para or sts) in tasks")
    strategy.check_config(cfg)
    return cfg


def validate_axes(axes: dict[str, str], base: Config | None = None) -> Config:
    """The config of ``base`` (defaults if None) with these axes; raises ConfigError if invalid."""
    values = (base or Config()).to_dict()
    values.update({k: axes[k] for k in AXES})
    return check(Config.from_dict(values))


def is_valid(axes: dict[str, str]) -> bool:
    try:
        validate_axes(axes)
    except ConfigError:
        return False
    return True


def preset_of(axes: dict[str, str]) -> str | None:
    """The paper row with exactly these axes, if any."""
    key = tuple(axes[k] for k in AXES)
    for name, preset in PAPER_PRESETS.items():
        if tuple(preset[k] for k in AXES) == key:
            return name
    return None


def all_variants() -> list[Variant]:
    """Every valid combination of the axes (invalid ones are rejected by ``check``)."""
    values = axis_values()
    combos = (dict(zip(AXES, combo, strict=True)) for combo in itertools.product(*values.values()))
    return [Variant.of(axes) for axes in combos if is_valid(axes)]


def preset(name: str) -> Variant:
    """One paper row by name (case-insensitive) or slug, validated."""
    key = slug(name)
    if key not in PRESET_BY_SLUG:
        known = ", ".join(repr(slug(n)) for n in PAPER_PRESETS)
        raise ConfigError(f"unknown variant preset {name!r}; presets: {known}")
    row = PRESET_BY_SLUG[key]
    try:
        validate_axes(PAPER_PRESETS[row])
    except ConfigError as exc:
        raise ConfigError(f"preset {row!r} is not available: {exc}") from None
    return Variant(PAPER_PRESETS[row], row)


def parse_filter(spec: str) -> dict[str, set[str]]:
    """``"smart=para,exit=lte|berter"`` -> {axis: allowed values}; unknown keys/values raise."""
    values = axis_values()
    wanted: dict[str, set[str]] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = ALIASES.get(key.strip().lower(), key.strip().lower())
        if not sep or key not in values:
            keys = ", ".join([*AXES, *ALIASES])
            raise ConfigError(
                f"unknown variant filter key {part.partition('=')[0]!r}; keys: {keys}"
            )
        for value in raw.split("|"):
            value = value.strip().lower()
            if key == "concat":
                value = CONCAT_SHORT.get(value, value)
            if value not in values[key]:
                raise ConfigError(
                    f"unknown value {value!r} for variant filter key {key}; "
                    f"allowed: {', '.join(values[key])}"
                )
            wanted.setdefault(key, set()).add(value)
    if not wanted:
        raise ConfigError(f"empty variant filter {spec!r}")
    return wanted


def select_variants(spec: str) -> list[Variant]:
    """Variants named by a spec, for ``sweeps/run.py --variants``.

    - ``"paper"``: the twelve Table 2 rows, in order;
    - ``"all"``: every valid combination;
    - a preset row name or slug (``"SLF + Smart Alt"``, ``"slf+smart_alt"``), or several
      separated by commas;
    - a filter over all valid combinations: ``"smart=para,exit=lte"`` (keys: the axis names,
      ``cos``, ``exit``; ``|`` separates alternatives: ``"strategy=joint|alternating"``).

    Each variant carries its paper row in ``preset`` when it is one.
    """
    text = spec.strip()
    if not text:
        raise ConfigError("empty variant spec; use paper, all, a preset name or axis=value filters")
    if text.lower() == "paper":
        return [preset(name) for name in PAPER_PRESETS]
    if text.lower() == "all":
        return all_variants()
    if "=" not in text:
        return [preset(name) for name in text.split(",") if name.strip()]
    wanted = parse_filter(text)
    chosen = [
        v for v in all_variants() if all(v.axes[k] in allowed for k, allowed in wanted.items())
    ]
    if not chosen:
        raise ConfigError(f"variant filter {spec!r} matches no variant")
    return chosen


def apply_variant(base: Config, variant: Variant) -> Config:
    """``base`` with a variant's axes, validated."""
    return validate_axes(variant.axes, base)
