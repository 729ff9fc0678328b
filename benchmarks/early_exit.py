"""Early-exit benchmark: accuracy kept vs. measured wall-clock speedup, per exit method.

For each exit method (confidence, entropy, lte, patience, qexit) a multitask model is
fine-tuned with strategy=alternating on capped slices of the CS224N data with the packaged
all-MiniLM-L6-v2 backbone (confidence and entropy train identically, so they share one
model). Per task it reports the final layer's dev metric, the dev metric and average exit
layer at the operating point chosen on the calibration slice (fastest setting within
``--tolerance`` of the final layer there), and the wall-clock speedup of the real early-exit
engine over the same model run to the last layer, at batch 1 and batch 32, on this CPU with
one thread, timed on a seeded random sample of each task's dev examples (``--speed-examples``;
"timed exit layer" is that sample's own average exit layer at batch 1). The "dev-oracle"
columns give the fastest shared grid setting that keeps 99% of the final dev metric, read off
the dev trade-off curve (optimistic: chosen on the data it is scored on; the same in both
calibrations' rows, since the curve is that of one threshold for all layers).

    python benchmarks/early_exit.py --quick     # small slices, a few minutes
    python benchmarks/early_exit.py             # larger slices (2500 per task), one epoch
    python benchmarks/early_exit.py --checkpoint DIR   # a trained model, e.g. a sweep trial's

``--checkpoint`` measures a model trained elsewhere (a sweep trial's checkpoint directory or a
``berter infer`` one) instead of training: its own config gives the data slices, so the
calibration slice is the one it held out, and the methods default to the one it was trained
for (confidence also gives entropy, which trains identically).

Each method is measured with both ways of choosing the operating point (``--calibration``):
one threshold shared by all layers, and one per exit layer (``exit_per_layer``, grown greedily
and guarded by bootstrap resamples of the calibration slice). "threshold" shows a per-layer
setting as values separated by "/" ("-": nothing exits at that layer).

The last line is the headline: the best method and calibration's batch-1 speedup on sst+para
and the share of the final layer's score it keeps there (target: >= 2x at >= 99%).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from berter.checkpoint import run_from_checkpoint, save_model  # noqa: E402
from berter.config import Config  # noqa: E402
from berter.errors import (  # noqa: E402
    ArgumentParser,
    ConfigError,
    non_negative_float,
    one_line_errors,
    positive_float,
    positive_int,
)
from berter.exits.calibration import describe, operating_point, thresholds_from_metrics  # noqa: E402
from berter.exits.engine import measure_speedup  # noqa: E402
from berter.exits.rules import build_exit_method  # noqa: E402
from berter.sweep.space import parse_settings  # noqa: E402
from berter.tasks import metric_column  # noqa: E402
from berter.train.callbacks import EpochLog  # noqa: E402
from berter.train.evaluate import Evaluation  # noqa: E402
from berter.train.run import TrainingRun  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cs224n"
METHODS = ("confidence", "entropy", "lte", "patience", "qexit")
TRAINED_AS = {"entropy": "confidence"}  # same training objective: reuse that model
HEADLINE_TASKS = ("sst", "para")
CALIBRATIONS = ("shared", "per-layer")


def settings(quick: bool) -> dict:
    if quick:
        return dict(max_train=150, max_dev=80, epochs=1, calib_max=30, speed_examples=16, repeats=1)
    return dict(max_train=2500, max_dev=400, epochs=1, calib_max=250, speed_examples=150, repeats=2)


def train(method: str, args: argparse.Namespace, s: dict) -> TrainingRun:
    cfg = Config(
        data_dir=str(args.data_dir),
        tasks=("sst", "para", "sts"),
        strategy="alternating",
        exit_method=method,
        max_train=s["max_train"],
        max_dev=s["max_dev"],
        epochs=s["epochs"],
        calib_fraction=0.2,
        calib_max=s["calib_max"],
        max_len=64,
        batch_size=16,
        dropout=0.1,
        lr=args.lr,
        num_threads=args.train_threads,
        seed=args.seed,
        **s["set"],
        **tolerance(args),
    )
    log = EpochLog(lambda m: print(f"  [{method}] {m}", file=sys.stderr, flush=True))
    run = TrainingRun(cfg, callbacks=[log])
    run.fit()
    return run


def tolerance(args: argparse.Namespace) -> dict:
    """``--tolerance``, when given: how close to the last layer the calibration slice must
    stay when the operating point is chosen (the model's own setting otherwise, 1% by default)."""
    return {} if args.tolerance is None else {"exit_tolerance": args.tolerance}


def from_checkpoint(directory: str, args: argparse.Namespace) -> TrainingRun:
    """A TrainingRun around a trained model: its config, its data slices, its weights."""
    changes = dict(data_dir=str(args.data_dir), **tolerance(args))
    if args.max_dev is not None:
        changes["max_dev"] = args.max_dev
    return run_from_checkpoint(directory, **changes)


def checkpoint_methods(trained: str, asked: str | None) -> list[str]:
    """The methods a model trained for ``trained`` can be measured with."""
    usable = [trained, *(m for m, base in TRAINED_AS.items() if base == trained)]
    methods = [m for m in asked.split(",") if m] if asked else usable
    wrong = [m for m in methods if m not in usable]
    if wrong:
        raise ConfigError(
            f"the checkpoint was trained for exit method {trained}; "
            f"{', '.join(wrong)} cannot be measured on it (use {', '.join(usable)})"
        )
    return methods


def dev_oracle(table: list[dict], task: str, final: float, n: int) -> tuple[float, float]:
    """Fewest average layers on the dev curve keeping 99% of the final dev metric."""
    floor = final - 0.01 * abs(final)
    ok = [r for r in table if r["task"] == task and r["metric"] >= floor]
    if not ok:
        return float(n), final
    best = min(ok, key=lambda r: (r["avg_exit_layer"], -r["metric"]))
    return best["avg_exit_layer"], best["metric"]


def evaluate_method(run: TrainingRun, method: str, s: dict, args: argparse.Namespace) -> list[dict]:
    """Rows of one exit method, one per task per calibration (same model, same dev and
    calibration passes)."""
    run.cfg = run.cfg.replace(exit_method=method)
    run.method = build_exit_method(run.cfg)
    dev, calib = run.evaluate("dev"), run.evaluate("calib")
    rows = []
    for calibration in s["calibrations"]:
        run.cfg = run.cfg.replace(exit_per_layer=calibration == "per-layer")
        rows += evaluate_calibration(run, dev, calib, calibration, s, args)
    return rows


def evaluate_calibration(
    run: TrainingRun, dev: Evaluation, calib: Evaluation, calibration: str, s: dict,
    args: argparse.Namespace,
) -> list[dict]:  # fmt: skip
    method = run.method.name
    op = operating_point(run, dev, calib)
    thresholds = thresholds_from_metrics(op, list(run.cfg.tasks))
    n = run.model.num_layers
    rows = []
    for task in run.tasks:
        enc = run.encoded[task.name]["dev"]
        col = metric_column(task)
        speed = {
            b: measure_speedup(
                run.model,
                run.method,
                enc,
                thresholds,
                b,
                max_examples=s["speed_examples"],
                repeats=s["repeats"],
                threads=1,
            )  # fmt: skip
            for b in (1, 32)
        }
        final = dev.tasks[task.name].final
        oracle_layer, oracle_metric = dev_oracle(op["exit_table"], task.name, final, n)
        rows.append({
            "method": method, "calibration": calibration, "task": task.name,
            "metric": col.split("_")[-1],
            "final": final, "exit": op[f"{col}_exit"], "threshold": thresholds[task.name],
            "avg_layer": op[f"{task.name}_exit_layer"], "n": n,
            "speedup_b1": speed[1]["speedup"], "speedup_b32": speed[32]["speedup"],
            "seconds_full_b1": speed[1]["seconds_full"], "seconds_exit_b1": speed[1]["seconds_exit"],
            "timed_layer": speed[1]["avg_exit_layer"],
            "oracle_layer": oracle_layer, "oracle_metric": oracle_metric,
        })  # fmt: skip
    if args.save:
        save_model(run, Path(args.save) / f"{method}-{calibration}", thresholds)
    return rows


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(rows: list[dict]) -> str:
    head = (
        "| method | calibration | task | final | at op. point | kept | threshold | "
        "avg exit layer | speedup b1 | speedup b32 | timed exit layer | "
        "dev-oracle layer (metric) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        kept = r["exit"] / r["final"] if r["final"] else float("nan")
        lines.append(
            f"| {r['method']} | {r['calibration']} | {r['task']} ({r['metric']}) | "
            f"{fmt(r['final'])} | {fmt(r['exit'])} | "
            f"{fmt(100 * kept, '.1f')}% | {describe(r['threshold'])} | "
            f"{fmt(r['avg_layer'], '.2f')}/{r['n']} | {fmt(r['speedup_b1'], '.2f')}x | "
            f"{fmt(r['speedup_b32'], '.2f')}x | {fmt(r['timed_layer'], '.2f')} | "
            f"{fmt(r['oracle_layer'], '.2f')} ({fmt(r['oracle_metric'])}) |"
        )
    return "\n".join(lines)


def headline(rows: list[dict]) -> str:
    """Best method and calibration on sst+para: batch-1 speedup (total time) and the worst
    score kept."""
    best = None
    for method, calibration in dict.fromkeys((r["method"], r["calibration"]) for r in rows):
        mine = [
            r
            for r in rows
            if (r["method"], r["calibration"]) == (method, calibration)
            and r["task"] in HEADLINE_TASKS
        ]
        if not mine:
            continue
        speed = sum(r["seconds_full_b1"] for r in mine) / sum(r["seconds_exit_b1"] for r in mine)
        kept = min(r["exit"] / r["final"] if r["final"] > 0 else float("nan") for r in mine)
        key = (kept >= 0.99, speed if kept >= 0.99 else kept)
        if best is None or key > best[0]:
            best = (key, f"{method} ({calibration} thresholds)", speed, kept)
    if best is None:
        return "headline: no results"
    _, method, speed, kept = best
    return (
        f"headline: {method} {speed:.2f}x batch-1 wall-clock speedup on sst+para at "
        f"{100 * kept:.1f}% of the final layer's score (target >= 2x at >= 99%)"
    )


@one_line_errors  # a bad setting, checkpoint or data: one line, no traceback
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small slices, one epoch (< 5 min)")
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--methods", help=f"default {','.join(METHODS)}")
    p.add_argument("--checkpoint", help="measure this trained model instead of training")
    p.add_argument("--max-dev", type=positive_int, help="with --checkpoint: dev examples per task")
    p.add_argument("--lr", type=positive_float, default=1e-4)
    p.add_argument(
        "--tolerance",
        type=non_negative_float,
        help="operating point: within this of the last layer on the calibration slice "
        "(default: the model's exit_tolerance, 0.01); the headline still asks 99%% on dev",
    )
    p.add_argument("--train-threads", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=positive_int, help="training epochs (default: 1)")
    p.add_argument(
        "--calib-max", type=positive_int, help="calibration examples per task (default 250)"
    )
    p.add_argument(
        "--speed-examples",
        type=positive_int,
        help="dev examples per task timed at each batch size, a seeded random sample "
        "(default 150; --quick 16)",
    )
    p.add_argument(
        "--calibration",
        default=",".join(CALIBRATIONS),
        help="how operating points are chosen on the calibration slice: shared (one threshold "
        "for all layers), per-layer (one per exit layer, exit_per_layer); default both",
    )
    p.add_argument("--save", help="also save each model as an inference checkpoint under this dir")
    p.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="a training setting, as sweeps/run.py --set (e.g. exit_distill=1); repeatable",
    )
    return measure(p.parse_args(argv))


def measure(args: argparse.Namespace) -> int:
    if not args.data_dir.is_dir():
        raise ConfigError(f"{args.data_dir}: no CS224N data directory")
    if args.checkpoint and args.set:
        raise ConfigError("--set changes training; --checkpoint measures a trained model")
    s = settings(args.quick)
    s["calibrations"] = [c for c in args.calibration.split(",") if c]
    wrong = [c for c in s["calibrations"] if c not in CALIBRATIONS]
    if wrong or not s["calibrations"]:
        raise ConfigError(
            f"--calibration takes {' and/or '.join(CALIBRATIONS)}, got {args.calibration!r}"
        )
    if args.epochs is not None:
        s["epochs"] = args.epochs
    if args.calib_max is not None:
        s["calib_max"] = args.calib_max
    if args.speed_examples is not None:
        s["speed_examples"] = args.speed_examples
    start = time.perf_counter()
    runs: dict[str, TrainingRun] = {}
    rows: list[dict] = []
    if args.checkpoint:
        run = from_checkpoint(args.checkpoint, args)
        methods = checkpoint_methods(run.cfg.exit_method, args.methods)
        runs = {m: run for m in methods}
        s.update(max_dev=run.cfg.max_dev, max_train=run.cfg.max_train, epochs="as trained")
        s.update(calib_max=run.cfg.calib_max, checkpoint=args.checkpoint)
    else:
        methods = [m for m in (args.methods or ",".join(METHODS)).split(",") if m]
        s["set"] = parse_settings(args.set, [])  # checked before any training
    for method in methods:
        trained_as = method if args.checkpoint else TRAINED_AS.get(method, method)
        if trained_as not in runs:
            t0 = time.perf_counter()
            runs[trained_as] = train(trained_as, args, s)
            print(
                f"trained {trained_as} in {time.perf_counter() - t0:.0f}s",
                file=sys.stderr,
                flush=True,
            )
        rows += evaluate_method(runs[trained_as], method, s, args)
    any_run = next(iter(runs.values()))
    model = f"model {any_run.cfg.model} ({any_run.model.num_layers} layers)"
    print(f"\nstrategy={any_run.cfg.strategy}, {model}, torch {torch.__version__}, "
          f"threads=1 for timing; settings {s}; {time.perf_counter() - start:.0f}s total\n")  # fmt: skip
    print(markdown(rows))
    print()
    print(headline(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
