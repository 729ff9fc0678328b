"""Test-only: on a fake cluster, a trial holding a fake GPU trains on the CPU and records where it ran.

Ray's fake multi-node provider gives its nodes GPUs that exist only as a resource; a trial
that holds one finds no CUDA and stops (berter.sweep.trainable.NoCudaError), as it should
on a real GPU node without CUDA. :func:`setup` is Ray's ``worker_process_setup_hook``: the
test gives the sweep's driver the runtime env :func:`runtime_env_var` spells, as `ray job
submit --runtime-env-json` does, so Ray runs it in every worker process of the sweep and
nothing in the package knows about it. It wraps ``trial_device`` in that process: the real
one runs first, and when it refuses a GPU trial for want of CUDA the trial trains on the
CPU instead. Each call writes a record (the trial, the node, the GPU ids Ray gave it,
whether CUDA was refused) to ``BERTER_TEST_PLACEMENTS``, a directory every node reaches.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

PLACEMENTS_ENV = "BERTER_TEST_PLACEMENTS"
HOOK = "fakegpu.setup"


def runtime_env_var() -> dict[str, str]:
    """The driver's environment that makes Ray run :func:`setup` in every worker process."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    job = {"runtime_env": {"worker_process_setup_hook": HOOK}}
    return {RAY_JOB_CONFIG_JSON_ENV_VAR: json.dumps(job)}


def setup() -> None:
    """Wrap ``berter.sweep.trainable.trial_device`` in this worker process."""
    from berter.sweep import trainable

    real = trainable.trial_device

    def on_cpu_if_no_cuda(trial: Any) -> tuple[str, int]:
        import ray

        refused = False
        try:
            device, cpus = real(trial)
        except trainable.NoCudaError:  # as on a GPU node without CUDA: the CPU instead
            refused = True
            resources = trial.trial_resources.required_resources
            device, cpus = "cpu", max(1, int(resources.get("CPU", 1)))
        record = {
            "trial_id": trial.trial_id,
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "no_cuda": refused,
            "at": time.time(),
        }
        directory = Path(os.environ[PLACEMENTS_ENV])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{trial.trial_id}-{os.getpid()}-{time.time_ns()}.json").write_text(
            json.dumps(record)
        )
        return device, cpus

    trainable.trial_device = on_cpu_if_no_cuda


def placements(directory: Path) -> list[dict[str, Any]]:
    """The records written so far, oldest first."""
    found = (
        [json.loads(p.read_text()) for p in directory.glob("*.json")] if directory.exists() else []
    )
    return sorted(found, key=lambda r: r["at"])
