"""Early-exit inference: run the encoder one layer at a time and really stop.

At batch size 1 an example returns as soon as its exit rule fires. In a batch, exited rows
are dropped (``EncoderState.select``) and only the remaining rows go through the next layer.
The rule is the exit method's own ``signal`` / ``fires`` (berter.exits), the same code the
post-hoc trade-off tables simulate, so both give the same exit layer per example.
``full=True`` runs every example to the last layer and computes only the last exit: the
plain model, the baseline of the wall-clock speedup. ``measure_costs`` times the engine's
parts (embedding, a layer, an exit check, the last exit, dropping rows) on this machine, the
cost model the operating point is chosen with (berter.exits.cost).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from berter.data.encode import EncodedSplit, make_batches
from berter.exits.base import (
    ExitContext,
    ExitMethod,
    Param,
    Thresholds,
    layer_param,
    never_exits,
    select_state,
)
from berter.exits.calibration import calibrate
from berter.exits.cost import Cost, CostModel
from berter.metrics import task_metric
from berter.model.multi_exit import MultiExitBert
from berter.tasks import Batch, Task


# ----------------------------------------------------------------------------- engine
@dataclass
class ExitRun:
    """Predictions and exit layers of one pass over a split, in the split's order."""

    preds: np.ndarray
    exit_layers: np.ndarray  # 1-based
    seconds: float
    layer_rows: int  # examples pushed through encoder layers, summed over all layer calls

    @property
    def avg_exit_layer(self) -> float:
        return float(self.exit_layers.mean()) if len(self.exit_layers) else float("nan")


def sample(enc: EncodedSplit, max_examples: int | None, seed: int = 0) -> EncodedSplit:
    """A seeded random ``max_examples`` of an encoded split, in the split's order (all for None).

    Random rather than the first ones: a file's first examples need not exit like the rest
    (on one full-data model the first 150 Quora dev pairs exit 0.25 layers later on average
    than all 4,000), and a speedup timed on them would not be the split's. Drawn with numpy
    rather than load_data's ``random.Random`` subset: the sample the timings in
    BENCHMARKS.md were taken on.
    """
    if max_examples is None or max_examples >= len(enc):
        return enc
    k = max(0, int(max_examples))
    keep = np.sort(np.random.default_rng(seed).choice(len(enc), size=k, replace=False))

    def pick(rows: list | None) -> list | None:
        return None if rows is None else [rows[i] for i in keep]

    return dataclasses.replace(
        enc,
        ids_a=pick(enc.ids_a),
        ids_b=pick(enc.ids_b),
        type_ids=pick(enc.type_ids),
        labels=pick(enc.labels),
    )


def prepare(enc: EncodedSplit, batch_size: int, device: torch.device | str) -> list[Batch]:
    """Padded batches on the device, built before any timing starts."""
    return [b.to(device) for b in make_batches(enc, batch_size, shuffle=False, seed=0)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exit_batch(
    model: MultiExitBert,
    method: ExitMethod,
    ctx: ExitContext,
    batch: Batch,
    param: Param,
    full: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One batch through the encoder, dropping rows as they exit.

    Returns (rows, predictions, 0-based exit layers, layer rows computed); rows are
    positions in the batch. Exit heads run only where ``method.checked_layers`` says (where
    the rule can fire, and a stateful signal's earlier layers), and the one host read per
    check is its decision, only where the rule can fire: at batch 1 nothing else waits.
    """
    n = model.num_layers
    full = full or never_exits(param)
    checked = [False] * (n - 1) if full else method.checked_layers(param, n)
    state = model.embed(batch)
    alive = torch.arange(len(batch), device=batch.input_ids.device)
    sig_state: dict[str, torch.Tensor] = {}
    rows, preds, layers = [], [], []
    computed = 0
    for i in range(n):
        state = model.layer(i, state)
        computed += alive.numel()
        if i < n - 1 and not checked[i]:
            continue
        out = model.exit(i, ctx.task.name, state)
        if i == n - 1:
            rows.append(alive)
            preds.append(ctx.predict(i, out.logits))
            layers.append(torch.full_like(alive, i))
            break
        sig, sig_state = method.signal(ctx, i, out, sig_state)
        at = layer_param(param, i)
        if at is None:  # a stateful signal's layer where nothing can exit: no decision
            continue
        fire = method.fires(sig, at)
        fired = int(fire.sum())
        if fired == 0:
            continue
        if fired == alive.numel():
            rows.append(alive)
            preds.append(ctx.predict(i, out.logits))
            layers.append(torch.full_like(alive, i))
            break
        rows.append(alive[fire])
        preds.append(ctx.predict(i, out.logits[fire]))
        layers.append(torch.full_like(rows[-1], i))
        keep = (~fire).nonzero().squeeze(1)
        state = state.select(keep)
        sig_state = select_state(sig_state, keep)
        alive = alive[keep]
    return torch.cat(rows), torch.cat(preds), torch.cat(layers), computed


@torch.inference_mode()
def run_exits(
    model: MultiExitBert,
    method: ExitMethod,
    batches: list[Batch],
    task: Task,
    param: Param,
    full: bool = False,
) -> ExitRun:
    """Early-exit (or full) inference over prepared batches, timed with perf_counter."""
    model.eval()
    ctx = ExitContext.from_model(model, task)
    device = next(model.parameters()).device
    results = []
    computed = 0
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        rows, preds, layers, calls = exit_batch(model, method, ctx, batch, param, full)
        results.append((batch.index[rows], preds, layers))
        computed += calls
    _sync(device)
    return collect(results, time.perf_counter() - start, computed)


def collect(results: list[tuple[torch.Tensor, ...]], seconds: float, computed: int) -> ExitRun:
    """An ExitRun from per-batch (split positions, predictions, 0-based exit layers)."""
    if not results:
        return ExitRun(np.zeros(0), np.zeros(0, dtype=np.int64), seconds, 0)
    index = torch.cat([r[0] for r in results]).cpu().numpy()
    preds = torch.cat([r[1] for r in results]).cpu().numpy()
    layers = torch.cat([r[2] for r in results]).cpu().numpy()
    order = np.argsort(index, kind="stable")  # back to the split's order
    return ExitRun(preds[order], layers[order].astype(np.int64) + 1, seconds, computed)


@torch.inference_mode()
def interleaved(
    model: MultiExitBert,
    method: ExitMethod,
    batches: list[Batch],
    task: Task,
    param: Param,
    repeats: int,
) -> tuple[ExitRun, ExitRun]:
    """(early exit, full model) over prepared batches, timed batch by batch.

    Each batch runs in both modes back to back, in alternating order, ``repeats`` times; per
    batch and mode the fastest run counts. A change in the machine's load (other jobs on a
    shared CPU) then hits both modes alike, where whole passes timed one after the other
    caught it in one mode only (two cores shared with other jobs: 0.85x and 1.00x for one
    setting). Without early exit only the full model runs: both are that run.
    """
    model.eval()
    ctx = ExitContext.from_model(model, task)
    device = next(model.parameters()).device
    modes = (True,) if never_exits(param) else (False, True)  # full?
    seconds = {m: np.full((max(1, repeats), len(batches)), np.inf) for m in modes}
    results: dict[bool, list[tuple[torch.Tensor, ...]]] = {m: [] for m in modes}
    computed = dict.fromkeys(modes, 0)
    for r in range(max(1, repeats)):
        for k, batch in enumerate(batches):
            for full in modes if (r + k) % 2 == 0 else modes[::-1]:
                _sync(device)
                start = time.perf_counter()
                rows, preds, layers, calls = exit_batch(model, method, ctx, batch, param, full)
                _sync(device)
                seconds[full][r, k] = time.perf_counter() - start
                if r == 0:
                    results[full].append((batch.index[rows], preds, layers))
                    computed[full] += calls
    runs = {m: collect(results[m], float(seconds[m].min(0).sum()), computed[m]) for m in modes}
    return runs[modes[0]], runs[True]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with a fixed intra-op thread count (restored afterwards), for comparable timings."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_speedup(
    model: MultiExitBert,
    method: ExitMethod,
    enc: EncodedSplit,
    thresholds: Thresholds | Param,
    batch_size: int,
    *,
    max_examples: int | None = None,
    repeats: int = 3,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Wall-clock early exit vs. the full model on the same examples, in this process.

    After a warm-up, each batch is timed in both modes back to back, ``repeats`` times, and
    per batch the fastest run of each mode counts (``interleaved``). Runs under
    ``torch.inference_mode`` with ``threads`` threads. Without early exit (``param`` None, or
    None at every layer) the engine runs the full model itself: that is timed once and the
    speedup is 1.0 exactly, not timing noise.
    """
    task = enc.task
    param = thresholds.get(task.name) if isinstance(thresholds, dict) else thresholds
    enc = sample(enc, max_examples)
    device = next(model.parameters()).device
    batches = prepare(enc, batch_size, device)
    labels = np.asarray(enc.labels, dtype=np.float64)
    with torch_threads(threads):
        warm = batches[: max(1, 32 // max(batch_size, 1))]
        interleaved(model, method, warm, task, param, 1)
        early, full = interleaved(model, method, batches, task, param, repeats)
    n = model.num_layers
    return {
        "task": task.name,
        "examples": len(enc),
        "batch_size": batch_size,
        "threshold": param,
        "metric_full": task_metric(task, full.preds, labels) if len(labels) else float("nan"),
        "metric_exit": task_metric(task, early.preds, labels) if len(labels) else float("nan"),
        "avg_exit_layer": early.avg_exit_layer,
        "layers_saved": 1.0 - early.avg_exit_layer / n,
        "seconds_full": full.seconds,
        "seconds_exit": early.seconds,
        "speedup": full.seconds / early.seconds if early.seconds > 0 else float("nan"),
    }


def speed_metrics(
    run: Any,
    thresholds: Thresholds | None = None,
    max_examples: int = 200,
    *,
    split: str = "dev",
    threads: int | None = 1,
    repeats: int = 3,
) -> dict[str, Any]:
    """Measured wall-clock speedups of a TrainingRun at batch 1 and 32 on capped dev examples.

    Expensive (it times real inference), so it is meant for the end of training, not every
    epoch. Keys: ``<task>_speedup_wall``, ``<task>_speedup_wall_b32``, and overall
    ``speedup_wall`` / ``speedup_wall_b32`` (total full time over total early-exit time).
    """
    thresholds = thresholds if thresholds is not None else calibrate(run)
    row: dict[str, Any] = {}
    for batch_size, suffix in ((1, ""), (32, "_b32")):
        full = early = 0.0
        for task in run.tasks:
            enc = run.encoded[task.name][split]
            res = measure_speedup(
                run.model, run.method, enc, thresholds, batch_size,
                max_examples=max_examples, repeats=repeats, threads=threads,
            )  # fmt: skip
            row[f"{task.name}_speedup_wall{suffix}"] = res["speedup"]
            full += res["seconds_full"]
            early += res["seconds_exit"]
        row[f"speedup_wall{suffix}"] = full / early if early > 0 else float("nan")
    return row





# ----------------------------------------------------------------------------- cost model
COST_EXAMPLES = 8  # single examples timed at batch 1
COST_REPEATS = 3  # passes per batch size; the fastest of each part counts
COST_ROWS = 16  # rows of the batch that gives each cost line its second point


def _part_seconds(
    model: MultiExitBert, method: ExitMethod, ctx: ExitContext, batch: Batch, param: float | None
) -> dict[str, float]:
    """Seconds of each engine part on one batch, run in the engine's order: the embedding,
    a layer (mean of all), an exit check below the last layer (head, signal, rule and its
    decision read; mean of all), the last exit (head, prediction) and, for more than one
    row, dropping half of the rows after the last layer."""
    n = model.num_layers
    device = batch.input_ids.device
    clock = time.perf_counter
    parts = dict.fromkeys(("embed", "layer", "check", "head", "drop"), 0.0)
    _sync(device)
    start = clock()
    state = model.embed(batch)
    _sync(device)
    parts["embed"] = clock() - start
    sig_state: dict[str, torch.Tensor] = {}
    for i in range(n):
        start = clock()
        state = model.layer(i, state)
        _sync(device)
        mid = clock()
        parts["layer"] += (mid - start) / n
        out = model.exit(i, ctx.task.name, state)
        if i == n - 1:
            ctx.predict(i, out.logits)
            _sync(device)
            parts["head"] = clock() - mid
            break
        sig, sig_state = method.signal(ctx, i, out, sig_state)
        int(method.fires(sig, param).sum())
        parts["check"] += (clock() - mid) / (n - 1)
    if len(batch) > 1:  # the engine's partial exit: keep the rows that go on
        alive = torch.arange(len(batch), device=device)
        fire = alive % 2 == 0
        start = clock()
        ctx.predict(n - 1, out.logits[fire])
        keep = (~fire).nonzero().squeeze(1)
        state.select(keep)
        select_state(sig_state, keep)
        alive[fire], alive[keep]
        _sync(device)
        parts["drop"] = clock() - start
    return parts


def _fastest(passes: list[list[dict[str, float]]]) -> dict[str, float]:
    """Per part, the fastest pass's mean over its batches."""
    means = [{k: float(np.mean([b[k] for b in p])) for k in p[0]} for p in passes]
    return {k: min(m[k] for m in means) for k in means[0]}


@torch.inference_mode()
def measure_costs(
    model: MultiExitBert,
    method: ExitMethod,
    enc: EncodedSplit,
    *,
    batch_sizes: tuple[int, ...] = (1, 32),
    examples: int = COST_EXAMPLES,
    repeats: int = COST_REPEATS,
    rows: int = COST_ROWS,
    threads: int | None = 1,
) -> CostModel:
    """The engine's cost model for one task on this machine: a short timing of its parts.

    Each part is timed on ``examples`` single examples and on one batch of ``rows`` (seeded
    random examples of ``enc``), after a warm-up pass, fastest of ``repeats``; the two points
    give each part's cost line in the rows it runs on, used up to the largest of
    ``batch_sizes`` (a layer's time grows in step with its rows). The
    model's weights do not matter, its shape and the examples' lengths do, so a run times
    this once (``TrainingRun.exit_costs``). A second or so per task for the packaged backbone.
    """
    task = enc.task
    n = model.num_layers
    ctx = ExitContext.from_model(model, task)
    device = next(model.parameters()).device
    grid = method.grid(task, n)
    param = grid[len(grid) // 2] if grid else None
    singles = prepare(sample(enc, examples, seed=1), 1, device)
    wide = prepare(sample(enc, rows, seed=2), rows, device)[:1]
    if not singles:
        raise ValueError(f"{task.name}: no examples to time the exit costs on")
    was_training = model.training
    model.eval()
    try:
        with torch_threads(threads):
            for batch in (singles[0], wide[0]):  # warm-up
                _part_seconds(model, method, ctx, batch, param)
            one = _fastest(
                [[_part_seconds(model, method, ctx, b, param) for b in singles] for _ in
                 range(max(1, repeats))]
            )  # fmt: skip
            many = _fastest(
                [[_part_seconds(model, method, ctx, wide[0], param)] for _ in range(max(1, repeats))]
            )
    finally:
        model.train(was_training)
    wide_rows = len(wide[0])

    def line(part: str) -> Cost:
        if wide_rows <= 1:
            return Cost(one[part], 0.0)
        per_row = max(0.0, (many[part] - one[part]) / (wide_rows - 1))
        return Cost(max(0.0, one[part] - per_row), per_row)

    return CostModel(
        embed=line("embed"), layer=line("layer"), check=line("check"), head=line("head"),
        drop=Cost(many["drop"], 0.0), batch_sizes=tuple(batch_sizes),
    )  # fmt: skip
