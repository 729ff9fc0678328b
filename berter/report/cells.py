"""How the report reads and shows one cell: numeric columns, hh:mm:ss, scores, dashes, and
means over seeds with their intervals or differences.

Results files of older or other sweeps may lack a column or hold None/NaN where a value is
missing; these helpers turn all of that into NaN when computing and a dash when showing, so
the analysis, the figures and the renderers never test for it themselves.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

DASH = "—"


def finite(x: Any) -> bool:
    """A number that is not None, NaN or infinite (strings that parse as one count)."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def numeric(df: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, or NaNs when the file does not have it."""
    if name in df.columns:
        return pd.to_numeric(df[name], errors="coerce")
    return pd.Series(np.nan, index=df.index, dtype=float)


def as_list(x: Any) -> list[float]:
    """A list column's cell as floats; [] when it is missing."""
    if x is None or isinstance(x, (float, str)):
        return []
    try:
        return [float(v) for v in x]
    except TypeError:
        return []


def format_duration(seconds: Any) -> str:
    """Seconds as hh:mm:ss (hours may exceed 24); missing -> a dash."""
    if not finite(seconds):
        return DASH
    total = int(round(float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def fmt(x: Any, digits: int = 3) -> str:
    """A score with ``digits`` decimals; missing -> a dash."""
    return f"{float(x):.{digits}f}" if finite(x) else DASH


def fmt_value(x: Any) -> str:
    """A hyperparameter value: integers plain, floats with 3 significant digits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and float(x).is_integer()):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.2e}" if abs(float(x)) < 1e-3 else f"{float(x):.3g}"
    return str(x)


def fmt_interval(row: Any, metric: str, show: Any = fmt, half: Any = None) -> str:
    """A mean over seeds with its 95% interval as ``mean ± half-width`` (the t-interval is
    symmetric); one seed: ``value (n=1)``; missing: a dash. ``row`` holds ``<metric>``,
    ``<metric>_low``, ``<metric>_high`` and ``<metric>_n`` (berter.report.stats); ``show``
    formats the mean and ``half`` the half-width (default: ``show``)."""
    mean, low, high = (row.get(f"{metric}{s}") for s in ("", "_low", "_high"))
    if not finite(mean):
        return DASH
    if finite(low) and finite(high):
        return f"{show(mean)} ± {(half or show)((float(high) - float(low)) / 2)}"
    n = row.get(f"{metric}_n")
    return f"{show(mean)} (n={int(n)})" if finite(n) else show(mean)


def signed(show: Any) -> Any:
    """``show`` for a difference: a sign, then ``show`` of its size."""
    return lambda x: ("-" if float(x) < 0 else "+") + show(abs(float(x)))


def fmt_diff(row: Any, metric: str, show: Any = fmt) -> str:
    """A paired difference from the baseline: ``+0.021 [+0.010, +0.033]``, with `` *`` when
    the bootstrap interval excludes zero; one pair: ``+0.021 (n=1)``; none: a dash. ``row``
    holds ``<metric>_diff`` and its ``_low``, ``_high``, ``_n`` and
    ``<metric>_excludes_zero`` (berter.report.stats.difference)."""
    mean, low, high = (row.get(f"{metric}_diff{s}") for s in ("", "_low", "_high"))
    sign = signed(show)
    if not finite(mean):
        return DASH
    if not (finite(low) and finite(high)):
        n = row.get(f"{metric}_diff_n")
        return f"{sign(mean)} (n={int(n)})" if finite(n) else sign(mean)
    mark = " *" if bool(row.get(f"{metric}_excludes_zero")) else ""
    return f"{sign(mean)} [{sign(low)}, {sign(high)}]{mark}"
