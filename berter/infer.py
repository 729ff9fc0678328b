"""Early-exit inference: run the encoder one layer at a time and really stop.

At batch size 1 an example returns as soon as its exit rule fires. In a batch, exited rows
are dropped (``EncoderState.select``) and only the remaining rows go through the next layer.
The rule is the exit method's own ``signal`` / ``fires`` (berter.exits), the same code the
post-hoc trade-off tables simulate, so both give the same exit layer per example.
``full=True`` runs every example to the last layer and computes only the last exit: the
plain model, the baseline of the wall-clock speedup.

Checkpoint format (a directory), written by ``save_model`` and read by ``load_model``:
    config.json      Config.to_dict()
    model.pt         MultiExitBert state dict (TrainingRun.state_dict()["model"]),
                     loadable with torch.load(weights_only=True)
    backbone/        the backbone's transformers config (the architecture; weights are in model.pt)
    tokenizer/       the tokenizer, so the directory is self-contained
    exits.json       {"exit_method", "thresholds": {task: value, [value per exit layer] or null},
                      "num_layers", "tolerance"}
A sweep trial's checkpoint (berter.trainable) is the same directory with ``state.pt``, the whole
``TrainingRun.state_dict()`` for resuming, in place of ``model.pt``; ``load_model`` reads the
weights from its "model" entry, so ``berter infer`` takes a trial checkpoint as it is.

Command line:
    python -m berter.infer CHECKPOINT_DIR DATAFILE --task sst [--threshold T]
        [--batch-size 1|32] [--max-examples N] [--method NAME] [--threads 1]
prints the metric at the last layer and with early exit, the average exit layer, and the
wall-clock speedup over the same model run to the last layer in the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from berter.config import Config
from berter.data import Batch, EncodedSplit, Task, encode, get_task, make_batches, read_task
from berter.errors import ArgumentParser, BerterError, ConfigError, DataError
from berter.exits import (
    EXIT_METHODS,
    ExitContext,
    ExitMethod,
    Param,
    as_param,
    calibrate,
    describe,
    layer_param,
    layer_values,
    never_exits,
    select_state,
)
from berter.metrics import metric_column, task_metric
from berter.model import MultiExitBert

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
STATE_FILE = "state.pt"  # a sweep trial's TrainingRun state (berter.trainable.CHECKPOINT_FILE)
EXITS_FILE = "exits.json"
BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"

Thresholds = dict[str, Param]


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
    positions in the batch. A layer where nothing can exit (a per-layer param of None)
    skips its exit head, unless the method's signal carries state from layer to layer.
    """
    n = model.num_layers
    full = full or never_exits(param)
    state = model.embed(batch)
    alive = torch.arange(len(batch), device=batch.input_ids.device)
    sig_state: dict[str, torch.Tensor] = {}
    rows, preds, layers = [], [], []
    computed = 0
    for i in range(n):
        state = model.layer(i, state)
        computed += alive.numel()
        at = layer_param(param, i)
        if i < n - 1 and (full or (at is None and not method.stateful)):
            continue
        out = model.exit(i, ctx.task.name, state)
        if i == n - 1:
            rows.append(alive)
            preds.append(ctx.predict(i, out.logits))
            layers.append(torch.full_like(alive, i))
            break
        sig, sig_state = method.signal(ctx, i, out, sig_state)
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
    seconds = time.perf_counter() - start
    if not results:
        return ExitRun(np.zeros(0), np.zeros(0, dtype=np.int64), seconds, 0)
    index = torch.cat([r[0] for r in results]).cpu().numpy()
    preds = torch.cat([r[1] for r in results]).cpu().numpy()
    layers = torch.cat([r[2] for r in results]).cpu().numpy()
    order = np.argsort(index, kind="stable")  # back to the split's order
    return ExitRun(preds[order], layers[order].astype(np.int64) + 1, seconds, computed)


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

    Both modes get a warmup pass, then ``repeats`` interleaved timed passes each; the fastest
    pass of each mode counts. Runs under ``torch.inference_mode`` with ``threads`` threads.
    """
    task = enc.task
    param = thresholds.get(task.name) if isinstance(thresholds, dict) else thresholds
    enc = sample(enc, max_examples)
    device = next(model.parameters()).device
    batches = prepare(enc, batch_size, device)
    labels = np.asarray(enc.labels, dtype=np.float64)
    with torch_threads(threads):
        warm = batches[: max(1, 32 // max(batch_size, 1))]
        run_exits(model, method, warm, task, param)
        run_exits(model, method, warm, task, param, full=True)
        early = full = None
        for _ in range(max(1, repeats)):
            e = run_exits(model, method, batches, task, param)
            f = run_exits(model, method, batches, task, param, full=True)
            early = e if early is None or e.seconds < early.seconds else early
            full = f if full is None or f.seconds < full.seconds else full
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


# ----------------------------------------------------------------------------- checkpoints
def save_model(
    run: Any, directory: str | Path, thresholds: Thresholds | None = None, weights: bool = True
) -> Path:
    """Write a self-contained inference checkpoint of a TrainingRun (see the module doc).

    ``thresholds``: per-task operating params; by default chosen on the calibration slice.
    ``weights=False`` leaves out model.pt, for a directory whose state.pt already has them.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if thresholds is None:
        thresholds = calibrate(run)
    (path / CONFIG_FILE).write_text(json.dumps(run.cfg.to_dict(), indent=2))
    if weights:
        torch.save(run.model.state_dict(), path / WEIGHTS_FILE)
    run.model.bert.config.save_pretrained(path / BACKBONE_DIR)
    if run.tokenizer is not None:
        run.tokenizer.save_pretrained(path / TOKENIZER_DIR)
    exits = {
        "exit_method": run.cfg.exit_method,
        "thresholds": {name: _stored(v) for name, v in thresholds.items()},
        "num_layers": run.model.num_layers,
        "tolerance": run.cfg.exit_tolerance,
    }
    (path / EXITS_FILE).write_text(json.dumps(exits, indent=2))
    return path


def _stored(param: Param) -> float | list[float | None] | None:
    """An operating param as JSON: a number, a list per exit layer (null: never), or null."""
    if isinstance(param, tuple):
        return layer_values(param, None)
    return None if param is None else float(param)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path.parent}: not a checkpoint (missing {path.name})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def load_model(
    directory: str | Path, device: torch.device | str = "cpu"
) -> tuple[Config, MultiExitBert, Thresholds]:
    """Rebuild the model of a checkpoint directory; returns (cfg, model in eval mode, thresholds)."""
    from transformers import AutoConfig, AutoModel

    path = Path(directory)
    if not path.is_dir():
        raise DataError(f"{path}: checkpoint directory does not exist")
    cfg = Config.from_dict(_read_json(path / CONFIG_FILE))
    exits = _read_json(path / EXITS_FILE) if (path / EXITS_FILE).exists() else {}
    tasks = [get_task(name) for name in cfg.tasks]
    try:
        backbone = AutoModel.from_config(
            AutoConfig.from_pretrained(path / BACKBONE_DIR), add_pooling_layer=False
        )
    except (OSError, ValueError) as e:
        raise DataError(f"{path / BACKBONE_DIR}: cannot read the backbone config: {e}") from None
    # the saved backbone config already has drop_top applied
    build_cfg = dataclasses.replace(cfg, drop_top=0)
    model = MultiExitBert.from_config(build_cfg, tasks, backbone)
    weights = path / WEIGHTS_FILE
    if not weights.is_file() and (path / STATE_FILE).is_file():
        weights = path / STATE_FILE  # a sweep trial's checkpoint
    if not weights.is_file():
        raise DataError(f"{path}: not a checkpoint (missing {WEIGHTS_FILE})")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if weights.name == STATE_FILE:
            state = state["model"]
        model.load_state_dict(state)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{weights}: cannot load the weights: {first}") from None
    try:
        thresholds = {name: as_param(exits.get("thresholds", {}).get(name)) for name in cfg.tasks}
    except (TypeError, ValueError) as e:
        raise DataError(f"{path / EXITS_FILE}: unreadable thresholds: {e}") from None
    return cfg, model.to(device).eval(), thresholds


def run_from_checkpoint(directory: str | Path, **changes: Any) -> Any:
    """A TrainingRun around a trained checkpoint: its config (with ``changes``), its data
    slices (the same seed holds out the same calibration slice) and its weights, in eval mode.
    For measuring a trained model with the training code's evaluation."""
    from berter.train import TrainingRun

    cfg, model, _ = load_model(directory)
    cfg = dataclasses.replace(cfg, drop_top=0, num_threads=None, **changes)
    run = TrainingRun(cfg, backbone=model.bert)
    run.model.load_state_dict(model.state_dict())
    run.model.eval()
    return run


def load_tokenizer(directory: str | Path, cfg: Config):
    """The checkpoint's own tokenizer, or the model's when the checkpoint has none."""
    from transformers import AutoTokenizer

    from berter.data import get_tokenizer

    tok_dir = Path(directory) / TOKENIZER_DIR
    if tok_dir.is_dir():
        try:
            return AutoTokenizer.from_pretrained(tok_dir)
        except (OSError, ValueError) as e:
            raise DataError(f"{tok_dir}: cannot load the tokenizer: {e}") from None
    return get_tokenizer(cfg.model)


def read_examples(task: Task, datafile: str | Path) -> list:
    """Examples of one task from a single data file in that task's format."""
    path = Path(datafile)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    one = dataclasses.replace(task, files={"input": path.name})
    return read_task(one, path.parent, "input")


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m berter.infer",
        description="Early-exit inference on a data file with a saved checkpoint; "
        "prints the metric, the average exit layer and the wall-clock speedup.",
    )
    p.add_argument("checkpoint", help="checkpoint directory (config.json, model.pt, exits.json)")
    p.add_argument("datafile", help="a data file of the task, in its train/dev file format")
    p.add_argument("--task", help="task name (default: the checkpoint's only task)")
    p.add_argument("--threshold", type=float, help="the exit rule's scalar (default: calibrated)")
    p.add_argument(
        "--method", choices=sorted(EXIT_METHODS), help="exit method (default: the checkpoint's)"
    )
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument(
        "--max-examples", type=int, help="time a seeded random sample of this many examples"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per mode, fastest counts")
    return p


def resolve(
    cfg: Config,
    model: MultiExitBert,
    saved: Thresholds,
    task: Task,
    method_name: str | None,
    threshold: float | None,
) -> tuple[ExitMethod, Param]:
    """The exit method and its scalar for a task: --threshold, else calibrated, else default."""
    name = method_name or cfg.exit_method
    method = EXIT_METHODS[name](cfg)
    needs = method.build_module(model.hidden_size, [task])
    have = model.exit_module
    if needs is not None and (
        have is None or task.name not in have or type(have[task.name]) is not type(needs[task.name])
    ):
        raise ConfigError(
            f"exit method {name} needs its trained module; the checkpoint was trained with "
            f"exit_method={cfg.exit_method}"
        )
    if threshold is not None:
        return method, threshold
    if name == cfg.exit_method:
        return method, saved.get(task.name)
    param = method.default_param(task)
    if param is None and method.grid(task, model.num_layers):
        raise ConfigError(f"no calibrated threshold for exit method {name}: pass --threshold")
    return method, param


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.max_examples is not None and args.max_examples < 1:
            raise ConfigError(f"--max-examples must be >= 1, got {args.max_examples}")
        cfg, model, saved = load_model(args.checkpoint)
        if args.task is None and len(cfg.tasks) != 1:
            raise ConfigError(f"the checkpoint has tasks {','.join(cfg.tasks)}: pass --task")
        task = get_task(args.task or cfg.tasks[0])
        if task.name not in cfg.tasks:
            raise ConfigError(
                f"task {task.name} is not one of the checkpoint's tasks ({','.join(cfg.tasks)})"
            )
        method, param = resolve(cfg, model, saved, task, args.method, args.threshold)
        examples = read_examples(task, args.datafile)
        tokenizer = load_tokenizer(args.checkpoint, cfg)
        layout = cfg.pair_layout if task.is_pair else "packed"
        enc = encode(examples, task, tokenizer, cfg.max_len, layout)
        res = measure_speedup(
            model, method, enc, param, args.batch_size,
            max_examples=args.max_examples, repeats=args.repeats, threads=args.threads,
        )  # fmt: skip
    except BerterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = model.num_layers
    col = metric_column(task)
    rule = describe(param)
    print(f"{task.name}: {res['examples']} examples, batch size {args.batch_size}, "
          f"exit method {method.name}, threshold {rule}")  # fmt: skip
    print(f"final layer : {col} {res['metric_full']:.4f} ({n} layers, {res['seconds_full']:.3f}s)")
    print(
        f"early exit  : {col} {res['metric_exit']:.4f}, avg exit layer {res['avg_exit_layer']:.2f}/{n} "
        f"({100 * res['layers_saved']:.1f}% layers saved, {res['seconds_exit']:.3f}s)"
    )
    speed = res["speedup"]
    print(
        f"speedup     : {speed:.2f}x wall clock" if not math.isnan(speed) else "speedup     : n/a"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
