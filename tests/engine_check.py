"""The engine-against-simulation check shared by the exit tests and the family tests."""

import numpy as np
import torch

from berter.exits.base import ExitContext
from berter.exits.engine import prepare, run_exits


def splitting_param(method, signals: torch.Tensor) -> float:
    """A scalar that sends some examples out at layer 1 and keeps others, far from any signal."""
    if method.name == "patience":
        return 1.0
    s = np.sort(signals[0].numpy())
    s = s[np.isfinite(s)]
    if len(s) < 2:
        return 0.5
    k = int(np.argmax(np.diff(s)))
    return float((s[k] + s[k + 1]) / 2)


def assert_engine_exits_where_the_simulation_says(run) -> None:
    """For every task of a TrainingRun: the engine at batch 1 and 4 (exited rows leave the
    batch mid-way) exits each dev example at the layer, with the prediction, that the post-hoc
    simulation gives for a splitting setting; some examples leave at different layers."""
    dev = run.evaluate("dev")
    mixed = False
    for task in run.tasks:
        te = dev.tasks[task.name]
        ctx = ExitContext.from_model(run.model, task)
        signals = run.method.layer_signals(ctx, te.logits, te.pooled)
        param = splitting_param(run.method, signals)
        simulated = run.method.exit_layers(signals, param)
        sim_preds = np.stack(te.preds)[simulated, np.arange(len(simulated))]
        mixed |= len(np.unique(simulated)) > 1
        for batch_size in (1, 4):
            batches = prepare(run.encoded[task.name]["dev"], batch_size, "cpu")
            got = run_exits(run.model, run.method, batches, task, param)
            assert got.exit_layers.tolist() == (simulated + 1).tolist(), (task.name, batch_size)
            assert np.allclose(got.preds, sim_preds, atol=1e-4), (task.name, batch_size)
    assert mixed, "the chosen params should send examples out at different layers"
