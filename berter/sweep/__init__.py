"""Sweeps: the Python API (api: ``berter.sweep.run``, ``Sweep``) and the command line (cli) over
the same options (options), the plan (plan), the search space (space), Optuna + ASHA
(searcher), one trial (trainable) and its seeds (seeds), the Tuner (tuner), the live progress
(progress) and the Parquet results (store, writer)."""

from berter.sweep.api import Sweep, SweepResult, run

__all__ = ["Sweep", "SweepResult", "run"]
