"""What early exit costs: a model of the engine's time, so an operating point is chosen by speed.

Saving layers is not the same as saving time: every exit check (the exit head, the rule's
signal, its decision read on the host) costs time too, about 12-14% of an encoder layer at
batch 1 on the packaged backbone (benchmarks/log/early-exit.md), so a threshold that lets
examples out at layer 5.6 of 6 after five checks each is slower than the plain model.

``CostModel`` holds the cost of each part of the engine (``berter.exits.engine.exit_batch``)
as a line in the number of rows it runs on, timed on the run's own machine
(``engine.measure_costs``). ``expected_seconds`` replays the engine on the exit layers a
setting gives on the calibration slice: per layer, the rows still alive run the layer, and
the exit check where the method computes one (``ExitMethod.checked_layers``, the same test
the engine uses). At batch 1 that is exact per example. In a batch of B the engine drops
exited rows, so a layer runs on the rows left and costs its fixed part as long as any row is
left; with examples falling into batches at random, a layer that a share p of the examples
reach runs on B p rows on average and runs at all with probability 1 - (1 - p)^B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cost:
    """Seconds one step of the engine takes on ``rows`` rows: ``fixed + per_row * rows``."""

    fixed: float
    per_row: float

    def expected(self, batch: int, alive: float, running: float) -> float:
        """Expected seconds per batch of ``batch`` rows when a share ``alive`` of them is
        left on average and the step runs at all with probability ``running``."""
        return self.fixed * running + self.per_row * batch * alive


ZERO = Cost(0.0, 0.0)


@dataclass(frozen=True)
class CostModel:
    """One task's engine costs on one machine (seconds), and the batch sizes it is used at.

    ``check``: an exit check below the last layer (exit head, the rule's signal and its
    decision read on the host); ``head``: the last layer's exit (head and prediction, which
    the full model pays too); ``drop``: dropping exited rows from a batch when some of its
    rows exit and some go on (never at batch 1). The operating point is chosen for the first
    of ``batch_sizes`` and must not be slower than the full model at any of them.
    """

    embed: Cost
    layer: Cost
    check: Cost
    head: Cost
    drop: Cost = ZERO
    batch_sizes: tuple[int, ...] = (1, 32)


# Saved layers only (checks free, a layer costs 1): the fewest layers, as operating points
# were chosen before issue 32; its expected "speedup" is n / average exit layer at batch 1.
LAYERS_ONLY = CostModel(ZERO, Cost(0.0, 1.0), ZERO, ZERO, ZERO, (1,))


def full_seconds(cost: CostModel, num_layers: int, batch: int) -> float:
    """Seconds per example of the full model (every layer, the last exit only)."""
    rows = float(batch)
    total = cost.embed.expected(batch, 1.0, 1.0) + cost.head.expected(batch, 1.0, 1.0)
    total += num_layers * cost.layer.expected(batch, 1.0, 1.0)
    return total / rows


def expected_seconds(
    cost: CostModel, exit_at: np.ndarray, checked: Sequence[bool], batch: int
) -> float:
    """Expected seconds per example of the early-exit engine at batch size ``batch``.

    ``exit_at``: each example's 0-based exit layer under the setting; ``checked``: per layer
    below the last, whether the engine computes an exit check there.
    """
    n = len(checked) + 1
    exit_at = np.asarray(exit_at)
    if len(exit_at) == 0:
        return full_seconds(cost, n, batch)
    b = float(batch)
    # share of examples alive when layer i starts (alive[n] = 0: all gone after the last)
    alive = np.array([(exit_at >= i).mean() for i in range(n + 1)], dtype=np.float64)
    running = 1.0 - (1.0 - alive) ** b
    total = cost.embed.expected(batch, 1.0, 1.0)
    for i in range(n):
        total += cost.layer.expected(batch, alive[i], running[i])
        if i == n - 1:
            total += cost.head.expected(batch, alive[i], running[i])
        elif checked[i]:
            total += cost.check.expected(batch, alive[i], running[i])
            # some of the batch's rows exit here and some go on: P(>= 1 exits and >= 1 stays)
            exits, stays = alive[i] - alive[i + 1], alive[i + 1]
            partial = 1.0 - (1.0 - exits) ** b - (1.0 - stays) ** b + (1.0 - alive[i]) ** b
            total += cost.drop.expected(batch, stays, max(partial, 0.0))
    return float(total / b)


def expected_speedups(
    cost: CostModel, exit_at: np.ndarray, checked: Sequence[bool]
) -> tuple[float, ...]:
    """Expected speedup over the full model at each of the cost model's batch sizes."""
    n = len(checked) + 1
    out = []
    for b in cost.batch_sizes:
        early = expected_seconds(cost, exit_at, checked, b)
        out.append(float(full_seconds(cost, n, b) / early) if early > 0 else 1.0)
    return tuple(out)
