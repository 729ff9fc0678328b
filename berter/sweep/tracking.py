"""Experiment tracking: Ray Tune's own logger callbacks for MLflow, Weights & Biases, TensorBoard.

``--tracking mlflow[=URI]`` logs one MLflow run per trial (its config as parameters, every
epoch's metrics, the final status) to URI, by default a local SQLite store ``mlflow.db`` in
the directory the sweep started from (MLflow 3's recommended local store: its ``mlruns/``
file store is in maintenance mode and refuses new runs unless told otherwise); ``--tracking wandb`` one W&B run per
trial in a project named after the sweep (offline with ``WANDB_MODE=offline``);
``--tracking tensorboard`` TensorBoard event files in each trial's directory under
``results/<name>/ray/``. They are Ray's callbacks (``MLflowLoggerCallback``,
``WandbLoggerCallback``, ``TBXLoggerCallback``), not ours; their packages are the
``tracking`` extra (``pip install -e ".[tracking]"``). The specs are stored in the plan, so
``--resume`` logs to the same place.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from berter.errors import ConfigError

PACKAGES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}


def parse_tracking(specs: list[str] | None) -> list[str]:
    """Validate ``--tracking`` values (repeatable or comma-separated) and resolve mlflow's
    default store to an absolute ``sqlite:`` URI; a missing package is a one-line error."""
    out = []
    for spec in (s.strip() for item in specs or [] for s in item.split(",")):
        if not spec:
            continue
        name, sep, uri = spec.partition("=")
        if name not in PACKAGES or (sep and name != "mlflow"):
            raise ConfigError(
                f"--tracking {spec!r}: give mlflow[=URI], wandb or tensorboard"
            )
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(
                f"--tracking {name} needs the {PACKAGES[name]} package: "
                'pip install -e ".[tracking]"'
            )
        if name == "mlflow":
            uri = uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
            spec = f"mlflow={uri}"
        out.append(spec)
    return out


def tracking_callbacks(specs: list[str], sweep_name: str) -> list[Any]:
    """Ray Tune logger callbacks for the plan's tracking specs."""
    callbacks: list[Any] = []
    for spec in specs:
        name, _, uri = spec.partition("=")
        if name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            callbacks.append(
                MLflowLoggerCallback(tracking_uri=uri, experiment_name=sweep_name)
            )
        elif name == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            callbacks.append(WandbLoggerCallback(project=sweep_name))
        else:
            from ray.tune.logger import TBXLoggerCallback

            callbacks.append(TBXLoggerCallback())
    return callbacks
