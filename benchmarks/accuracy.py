"""Accuracy: the best dev score a sweep finds on the full CS224N data, against the target.

Runs ``sweeps/run.py`` (one multitask model per trial, packaged backbone) over three pair
encodings with the final-layer strategy and a searched learning rate, then reads the
sweep's ``trials.parquet`` and prints the best trial's per-task scores and dev score (the
formula inferred from the BERTer paper's Table 2: mean of SST accuracy, Quora accuracy and
(STS r + 1) / 2).

Anchors (issue of record): the BERTer paper's best is 0.683 with bert-base; three separate
single-task transformers ``Trainer`` fine-tunes of the packaged backbone (lr 5e-5, batch 16,
3 epochs, full data) score 0.751. Target: 0.77.

    python benchmarks/accuracy.py             # full data, 3 epochs, 3 trials (hours on 2 cores)
    python benchmarks/accuracy.py --resume    # continue an interrupted run (sweeps/run.py --resume)
    python benchmarks/accuracy.py --report    # only read the results so far
    python benchmarks/accuracy.py --quick     # 300 train / 300 dev per task, 1 epoch (minutes)

Last line: ``best dev score / target: R``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from berter.errors import ArgumentParser, positive_int  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cs224n"
TARGET = 0.77
ANCHOR = 0.751  # three single-task Trainer fine-tunes of the same backbone
VARIANTS = "smart=off,slf=off,strategy=final,exit=none,cos=on|off,concat=before|after"


def sweep_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, str(ROOT / "sweeps" / "run.py"), "--name", args.name,
           "--results", str(args.results)]  # fmt: skip
    if args.resume:
        return [*cmd, "--resume"]
    cmd += [
        "--search", "lr", "--range", f"lr={args.lr_range}", "--variants", args.variants,
        "--data-dir", str(args.data_dir), "--epochs", str(args.epochs),
        "--num-samples", str(args.trials), "--cpus-per-trial", str(args.cpus),
    ]  # fmt: skip
    for setting in args.set:
        cmd += ["--set", setting]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    if args.quick:
        cmd += ["--max-train", "300", "--max-dev", "300"]
    return cmd


def report(directory: Path) -> float:
    """Print the sweep's trials and the best one's scores; return the best dev score."""
    import pandas as pd

    from berter.sweep.store import read_results

    trials = read_results(directory)["trials"]
    cols = ["trial_name", "status", "lr", "epochs_done", "best_epoch", "dev_score",
            "sst_acc", "para_acc", "sts_corr", "train_seconds"]  # fmt: skip
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(trials[cols].to_string(index=False))
    scored = trials.dropna(subset=["dev_score"])
    if scored.empty:
        print("no trial has finished an epoch yet")
        return float("nan")
    best = scored.sort_values("dev_score").iloc[-1]
    print(
        f"\nbest: {best.trial_name} ({best.variant}), lr {best.lr:.3g}, epoch {best.best_epoch}: "
        f"SST {best.sst_acc:.3f} / Quora {best.para_acc:.3f} / STS r {best.sts_corr:.3f} "
        f"= dev score {best.dev_score:.4f} (anchor {ANCHOR}, target {TARGET})"
    )
    print(f"training time of all trials: {trials.train_seconds.sum():.0f} s")
    return float(best.dev_score)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--results", type=Path, default=ROOT / "results")
    p.add_argument("--name", help="sweep name (default full-accuracy, or accuracy-quick)")
    p.add_argument("--quick", action="store_true", help="300 examples per task, 1 epoch")
    p.add_argument("--epochs", type=positive_int, help="epochs per trial (default 3; --quick 1)")
    p.add_argument(
        "--trials", type=positive_int, default=3, help="one per pair encoding by default"
    )
    p.add_argument("--cpus", type=positive_int, default=2, help="CPUs per trial")
    p.add_argument("--variants", default=VARIANTS, help="sweeps/run.py --variants filter")
    p.add_argument("--lr-range", default="6e-5:1.5e-4", help="searched learning rate LOW:HIGH")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="fix a setting for every trial (sweeps/run.py --set; repeatable)")  # fmt: skip
    p.add_argument("--seed", type=int, help="seed of the searcher and the trials (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the named sweep")
    p.add_argument("--report", action="store_true", help="only report the results so far")
    args = p.parse_args(argv)
    args.name = args.name or ("accuracy-quick" if args.quick else "full-accuracy")
    args.epochs = args.epochs or (1 if args.quick else 3)
    if not args.report:
        cmd = sweep_command(args)
        print("$ " + " ".join(c if " " not in c and "|" not in c else repr(c) for c in cmd))
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT).returncode
        print(f"sweep exit status {code}, {time.perf_counter() - start:.0f} s wall clock")
        if code == 2:
            return 2
    best = report(args.results / args.name)
    print(f"\nbest dev score / target: {best / TARGET:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
