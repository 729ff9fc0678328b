"""Sweeps: the Python API (api: ``berter.sweep.run``), the command line (cli), the plan (plan),
the search space (space), Optuna + ASHA (searcher), one trial (trainable) and its seeds
(seeds), the Tuner (tuner), the live progress on a terminal (progress) and the Parquet
results (store, writer)."""

from __future__ import annotations

from typing import Any


def run(**options: Any) -> Any:
    """Run a sweep with ``python sweeps/run.py``'s options by their dest names and return its
    three tables; see :func:`berter.sweep.api.run`. Imported on call: ``import berter.sweep``
    stays light (no Ray, no torch)."""
    from berter.sweep.api import run as _run

    return _run(**options)
