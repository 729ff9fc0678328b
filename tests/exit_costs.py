"""Engine cost models for tests, injected so that no test times anything (milliseconds)."""

from berter.exits.cost import Cost, CostModel

# Close to the packaged backbone's batch-1 profile (benchmarks/log/early-exit.md): a layer
# 4.35 ms, an exit check 0.6 ms, the embedding 0.6 ms, the last exit 0.45 ms; in a batch
# of 32 a layer costs about 3.4 ms a row and a check is shared by the rows.
TYPICAL = CostModel(
    embed=Cost(0.3, 0.3),
    layer=Cost(1.0, 3.35),
    check=Cost(0.55, 0.05),
    head=Cost(0.4, 0.05),
    drop=Cost(0.3, 0.0),
)

# An exit check that costs as much as a hundred layers: no early exit can pay for it.
UNPROFITABLE = CostModel(
    embed=Cost(0.3, 0.3),
    layer=Cost(1.0, 3.35),
    check=Cost(100.0, 435.0),
    head=Cost(0.4, 0.05),
    drop=Cost(0.3, 0.0),
)
