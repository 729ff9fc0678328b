"""Sweeps: the command line (cli), the plan (plan), the search space (space), Optuna + ASHA
(searcher), one trial (trainable) and its seeds (seeds), the Tuner (tuner) and the Parquet
results (store, writer)."""
