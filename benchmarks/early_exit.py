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

The "default trial" section measures what a user gets from one ordinary sweep trial of an
early-exit variant (issue 32): ``strategy=alternating,exit=confidence,smart=off,cos=off,
concat=before,slf=off`` with the Config's defaults otherwise, 2,000 training examples per task,
2 epochs, 400 dev examples per task, all timed (``--quick``: 100, one epoch, 60). Its rows:
"before", the operating point as chosen before issue 32 (the fewest layers within tolerance,
one shared threshold), and "after", chosen by expected speed under the engine's cost model
timed on this machine, for each calibration (``--quick``: the model's default one);
"expected" is that cost model's speedup on the dev examples' exit layers.
``--default-trial-checkpoint DIR`` measures a trained model (e.g. that trial's checkpoint)
instead of training one; ``--default-trial-only`` leaves out the per-method models; with
``--checkpoint`` alone there is no default-trial section.

The last lines are the headlines: the best method and calibration's batch-1 speedup on
sst+para and the share of the final layer's score it keeps there (target: >= 2x at >= 99%),
and the default trial's batch-1 speedups per task at the model's default calibration.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

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
from berter.exits.base import ExitContext, Param  # noqa: E402
from berter.exits.calibration import (  # noqa: E402
    calibrate,
    choose,
    describe,
    expected_speedup,
    operating_point,
    simulate,
    thresholds_from_metrics,
)
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
# issue 32's ordinary sweep trial of an early-exit variant; every other field a Config default
DEFAULT_TRIAL = dict(
    strategy="alternating", exit_method="confidence", smart="off", cos_loss="off",
    concat="before_embed", slf="off",
)  # fmt: skip
DEFAULT_TRIAL_TARGETS = {"para": 2.0, "sst": 1.3}  # batch-1 speedup at >= 99% of the last layer


def settings(quick: bool) -> dict:
    if quick:
        return dict(max_train=150, max_dev=80, epochs=1, calib_max=30, speed_examples=16, repeats=1)
    return dict(max_train=2500, max_dev=400, epochs=1, calib_max=250, speed_examples=150, repeats=2)


def default_trial_settings(quick: bool) -> dict:
    """Issue 32's training budget (``--quick``: a smoke-sized one) and how it is timed: the
    issue's 400 dev examples per task, all timed."""
    if quick:
        return dict(max_train=100, max_dev=60, epochs=1, speed_examples=16, repeats=1)
    return dict(max_train=2000, max_dev=400, epochs=2, speed_examples=400, repeats=2)


def default_trial_config(args: argparse.Namespace, s: dict) -> Config:
    """The default trial's Config: the variant, the budget, ``--set``; the rest defaults."""
    d = s["default_trial"]
    return Config(
        data_dir=str(args.data_dir),
        max_train=d["max_train"],
        max_dev=d["max_dev"],
        epochs=d["epochs"],
        num_threads=args.train_threads,
        seed=args.seed,
        **{**DEFAULT_TRIAL, **s["set"]},
        **tolerance(args),
    )


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


def default_trial(args: argparse.Namespace, s: dict) -> tuple[TrainingRun, list[dict]]:
    """The default trial's model (trained, or ``--default-trial-checkpoint``) and its rows."""
    if args.default_trial_checkpoint:
        run = from_checkpoint(args.default_trial_checkpoint, args)
        # the choice, not the training: "(default)" marks today's default calibration
        run.cfg = run.cfg.replace(exit_per_layer=Config().exit_per_layer)
    else:
        t0 = time.perf_counter()
        cfg = default_trial_config(args, s)
        log = EpochLog(lambda m: print(f"  [default trial] {m}", file=sys.stderr, flush=True))
        run = TrainingRun(cfg, callbacks=[log])
        run.fit()
        print(f"trained the default trial in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return run, evaluate_default_trial(run, s, args)


def fewest_layers(run: TrainingRun, calib: Evaluation) -> dict[str, Param]:
    """The operating point as chosen before issue 32: one threshold for every layer, the
    fewest average layers within tolerance on the calibration slice (``choose``)."""
    out: dict[str, Param] = {}
    for task in run.tasks:
        grid, te = run.method.grid(task, run.model.num_layers), calib.tasks[task.name]
        if not grid or len(te.labels) == 0:
            out[task.name] = None
            continue
        curve = simulate(run.method, ExitContext.from_model(run.model, task), te, grid)
        out[task.name] = choose(curve, te.final, run.cfg.exit_tolerance)
    return out


def evaluate_default_trial(run: TrainingRun, s: dict, args: argparse.Namespace) -> list[dict]:
    """Before (fewest layers, one shared threshold) and after (expected speed, each
    calibration; ``--quick``: the model's default one) on one model, timed at batch 1 and 32
    on the same dev examples."""
    d = s["default_trial"]
    default = "per-layer" if run.cfg.exit_per_layer else "shared"
    dev, calib = run.evaluate("dev"), run.evaluate("calib")
    costs = run.exit_costs()
    choices = [("before", "shared", fewest_layers(run, calib))]
    for calibration in [default] if args.quick else s["calibrations"]:
        run.cfg = run.cfg.replace(exit_per_layer=calibration == "per-layer")
        choices.append(("after", calibration, calibrate(run, calib, costs)))
    run.cfg = run.cfg.replace(exit_per_layer=default == "per-layer")
    n = run.model.num_layers
    rows = []
    for choice, calibration, thresholds in choices:
        for task in run.tasks:
            ctx = ExitContext.from_model(run.model, task)
            param, te = thresholds[task.name], dev.tasks[task.name]
            at = simulate(run.method, ctx, te, [param])
            expected = (
                expected_speedup(run.method, ctx, te, param, costs[task.name])
                if task.name in costs
                else (1.0, 1.0)
            )
            speed = {
                b: measure_speedup(
                    run.model, run.method, run.encoded[task.name]["dev"], param, b,
                    max_examples=d["speed_examples"], repeats=d["repeats"], threads=1,
                )
                for b in (1, 32)
            }  # fmt: skip
            rows.append({
                "choice": choice, "calibration": calibration, "default": calibration == default,
                "task": task.name, "metric": metric_column(task).split("_")[-1],
                "final": te.final, "exit": at.metrics[0], "threshold": param,
                "avg_layer": at.avg_layers[0] if len(te.labels) else float(n), "n": n,
                "expected_b1": expected[0], "expected_b32": expected[-1],
                "speedup_b1": speed[1]["speedup"], "speedup_b32": speed[32]["speedup"],
                "timed_layer": speed[1]["avg_exit_layer"],
            })  # fmt: skip
    return rows


def default_trial_markdown(rows: list[dict]) -> str:
    head = (
        "| choice | calibration | task | final | at op. point | kept | threshold | "
        "avg exit layer | expected b1 | speedup b1 | expected b32 | speedup b32 | "
        "timed exit layer |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        kept = r["exit"] / r["final"] if r["final"] else float("nan")
        calibration = r["calibration"] + (" (default)" if r["choice"] == "after" and
                                          r["default"] else "")  # fmt: skip
        lines.append(
            f"| {r['choice']} | {calibration} | {r['task']} ({r['metric']}) | "
            f"{fmt(r['final'])} | {fmt(r['exit'])} | {fmt(100 * kept, '.1f')}% | "
            f"{describe(r['threshold'])} | {fmt(r['avg_layer'], '.2f')}/{r['n']} | "
            f"{fmt(r['expected_b1'], '.2f')}x | {fmt(r['speedup_b1'], '.2f')}x | "
            f"{fmt(r['expected_b32'], '.2f')}x | {fmt(r['speedup_b32'], '.2f')}x | "
            f"{fmt(r['timed_layer'], '.2f')} |"
        )
    return "\n".join(lines)


def default_trial_headline(rows: list[dict]) -> str:
    """The default trial after issue 32, at the model's default calibration: batch-1 speedup
    and score kept per headline task, against the issue's targets."""
    parts = []
    for r in rows:
        if r["choice"] != "after" or not r["default"] or r["task"] not in DEFAULT_TRIAL_TARGETS:
            continue
        kept = r["exit"] / r["final"] if r["final"] else float("nan")
        target = DEFAULT_TRIAL_TARGETS[r["task"]]
        parts.append(
            f"{r['task']} {r['speedup_b1']:.2f}x (b32 {r['speedup_b32']:.2f}x) at "
            f"{100 * kept:.1f}% (target >= {target:g}x at >= 99%)"
        )
    if not parts:
        return "default trial: no results"
    return f"default trial ({rows[0]['n']} layers), after: " + "; ".join(parts)


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
        "--repeats",
        type=positive_int,
        help="timed passes per mode, the fastest counts (default 2; --quick 1)",
    )
    p.add_argument(
        "--calibration",
        default=",".join(CALIBRATIONS),
        help="how operating points are chosen on the calibration slice: shared (one threshold "
        "for all layers), per-layer (one per exit layer, exit_per_layer); default both",
    )
    p.add_argument("--save", help="also save each model as an inference checkpoint under this dir")
    p.add_argument(
        "--default-trial-checkpoint",
        help="measure the default-trial rows on this trained model instead of training it",
    )
    p.add_argument(
        "--default-trial-only",
        action="store_true",
        help="only the default-trial rows (no model per exit method)",
    )
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
    if (args.checkpoint or args.default_trial_checkpoint) and args.set:
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
    s["default_trial"] = default_trial_settings(args.quick)
    if args.repeats is not None:
        s["repeats"] = s["default_trial"]["repeats"] = args.repeats
    start = time.perf_counter()
    runs: dict[str, TrainingRun] = {}
    rows: list[dict] = []
    methods: list[str] = []
    s["set"] = parse_settings(args.set, [])  # checked before any training
    if args.default_trial_only:
        pass
    elif args.checkpoint:
        run = from_checkpoint(args.checkpoint, args)
        methods = checkpoint_methods(run.cfg.exit_method, args.methods)
        runs = {m: run for m in methods}
        s.update(max_dev=run.cfg.max_dev, max_train=run.cfg.max_train, epochs="as trained")
        s.update(calib_max=run.cfg.calib_max, checkpoint=args.checkpoint)
    else:
        methods = [m for m in (args.methods or ",".join(METHODS)).split(",") if m]
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
    # with --checkpoint alone that model is what is asked about: no default trial to train
    trial, trial_rows = None, []
    if not args.checkpoint or args.default_trial_checkpoint or args.default_trial_only:
        trial, trial_rows = default_trial(args, s)
    any_run = next(iter(runs.values()), trial)
    model = f"model {any_run.cfg.model} ({any_run.model.num_layers} layers)"
    print(f"\nstrategy={any_run.cfg.strategy}, {model}, torch {torch.__version__}, "
          f"threads=1 for timing; settings {s}; {time.perf_counter() - start:.0f}s total\n")  # fmt: skip
    if rows:
        print(markdown(rows))
        print()
    if trial is not None:
        print(f"default trial: {trial.cfg.variant}, max_train={trial.cfg.max_train}, "
              f"epochs={trial.cfg.epochs}, max_dev={trial.cfg.max_dev}\n")  # fmt: skip
        print(default_trial_markdown(trial_rows))
        print()
    if rows:
        print(headline(rows))
    if trial is not None:
        print(default_trial_headline(trial_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
