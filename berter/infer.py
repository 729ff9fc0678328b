"""The `berter infer` command line: a trained checkpoint run with early exit on a data file.

Command line:
    python -m berter.infer CHECKPOINT_DIR|URI DATAFILE --task sst [--threshold T]
        [--batch-size 1|32] [--max-examples N] [--method NAME] [--threads 1]
prints the metric at the last layer and with early exit, the average exit layer, and the
wall-clock speedup over the same model run to the last layer in the same process.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from berter.checkpoint import load_model, load_tokenizer
from berter.config import Config
from berter.data.encode import encode
from berter.data.files import read_task
from berter.errors import ArgumentParser, BerterError, ConfigError, DataError
from berter.exits.base import ExitMethod, Param, Thresholds, never_exits
from berter.exits.calibration import describe
from berter.exits.engine import measure_speedup
from berter.exits.rules import EXIT_METHODS
from berter.model.multi_exit import MultiExitBert
from berter.objstore import local_copy
from berter.tasks import Task, get_task, metric_column


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
    p.add_argument(
        "checkpoint",
        help="checkpoint directory (config.json, model.pt, exits.json), or its s3:// / gs:// URI",
    )
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
        with local_copy(args.checkpoint) as checkpoint:  # a URI: a temporary copy
            cfg, model, saved = load_model(checkpoint)
            tokenizer = load_tokenizer(checkpoint, cfg)
        if args.task is None and len(cfg.tasks) != 1:
            raise ConfigError(f"the checkpoint has tasks {','.join(cfg.tasks)}: pass --task")
        task = get_task(args.task or cfg.tasks[0])
        if task.name not in cfg.tasks:
            raise ConfigError(
                f"task {task.name} is not one of the checkpoint's tasks ({','.join(cfg.tasks)})"
            )
        method, param = resolve(cfg, model, saved, task, args.method, args.threshold)
        examples = read_examples(task, args.datafile)
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
    if never_exits(param):  # the engine ran the full model: not a timing
        print("speedup     : 1.00x (no early exit)")
    elif math.isnan(speed):
        print("speedup     : n/a")
    else:
        print(f"speedup     : {speed:.2f}x wall clock")
    return 0


if __name__ == "__main__":
    sys.exit(main())


