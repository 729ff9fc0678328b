"""Sweeps: the search space (space), Optuna + ASHA (searcher), the trainable, the Parquet store and the driver (tuner)."""
