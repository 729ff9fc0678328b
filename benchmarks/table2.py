"""BERTer's Table 2 reproduced: the twelve paper presets x seeds on the real data, one scale.

Runs ``sweeps/run.py --variants paper --seeds N --search none`` (fixed hyperparameters, the
same for every row, as the paper did: "we maintain consistent model configurations and
learning rates"), then prints, per preset, the mean and 95% t-interval over seeds of the dev
score, the task metrics, training time, average exit layer and wall-clock speedup beside the
paper's printed row, and each row's paired difference from the Baseline (berter.results).

    python benchmarks/table2.py                 # the full run (hours on 2 cores; resumable)
    python benchmarks/table2.py --resume        # continue it (sweeps/run.py --resume)
    python benchmarks/table2.py --report        # only read the results so far
    python benchmarks/table2.py --probe         # one row, one seed, at the run's scale: its time
    python benchmarks/table2.py --quick         # the same shape on a slice (minutes)

Scale (default): 1,000 training and 1,000 dev examples per task, 3 epochs, 3 seeds, the
packaged 6-layer backbone: chosen so that the 36 runs fit about 6 hours of a 2-core machine
(the probe measures one run; REPRODUCTION.md records the scale actually run).

Last line: ``table2: ...`` (rows done, best preset and its dev score interval, the Baseline's).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from berter.errors import ArgumentParser, one_line_errors, positive_int  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cs224n"
COLUMNS = ("dev_score", "sst_acc", "para_acc", "sts_corr", "train_seconds", "avg_exit_layer",
           "speedup_wall")  # fmt: skip
QUICK = {"max_train": 40, "max_dev": 40, "epochs": 1, "seeds": 2, "max_len": 64}
FULL = {"max_train": 1000, "max_dev": 1000, "epochs": 3, "seeds": 3, "max_len": 128}


def sweep_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, str(ROOT / "sweeps" / "run.py"), "--name", args.name,
           "--results", str(args.results)]  # fmt: skip
    if args.resume:
        return [*cmd, "--resume"]
    variants = "Baseline" if args.probe else "paper"
    if args.probe == "heaviest":
        variants = "SLF + Smart Alt + Early Exit + Cos Loss"
    return [*cmd, "--variants", variants, "--search", "none", "--data-dir", str(args.data_dir),
            "--seeds", str(1 if args.probe else args.seeds), "--epochs", str(args.epochs),
            "--max-train", str(args.max_train), "--max-dev", str(args.max_dev),
            "--max-len", str(args.max_len), "--model", args.model,
            "--cpus-per-trial", str(args.cpus), "--max-concurrent", "1"]  # fmt: skip


def cell(mean: float, low: float, high: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "-"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def report(directory: Path) -> str:
    """Print the per-preset table; return the headline."""
    import pandas as pd

    from berter.results import paired_difference, read_results, summarise_seeds
    from berter.variants import PAPER_TABLE2

    trials = read_results(directory)["trials"]
    if trials.empty:
        return "table2: no run has finished yet"
    rows = summarise_seeds(trials, by="preset")
    diff = paired_difference(trials, by="preset").set_index("preset") if len(rows) else None
    out = []
    for _, r in rows.iterrows():
        paper = PAPER_TABLE2.get(r.preset, {})
        line = {"preset": r.preset, "n": int(r.n_seeds)}
        for c in COLUMNS:
            digits = 0 if c == "train_seconds" else 3
            line[c] = cell(r[c], r[f"{c}_low"], r[f"{c}_high"], digits)
        line["paper dev / SST / para / STS"] = (
            " / ".join(f"{paper[k]:.3f}" for k in ("dev_score", "sst_acc", "para_acc", "sts_corr"))
            if paper else "-"
        )
        if diff is not None and r.preset in diff.index and r.preset != "Baseline":
            d = diff.loc[r.preset]
            mark = " *" if bool(d.get("dev_score_excludes_zero", False)) else ""
            line["dev - Baseline"] = cell(d["dev_score_diff"], d["dev_score_diff_low"],
                                          d["dev_score_diff_high"]) + mark  # fmt: skip
        out.append(line)
    table = pd.DataFrame(out)
    with pd.option_context("display.width", 250, "display.max_columns", 20,
                           "display.max_colwidth", 40):  # fmt: skip
        print(table.to_string(index=False))
    print("* the paired bootstrap 95% interval of the difference excludes 0")
    best = rows.sort_values("dev_score").iloc[-1]
    base = rows[rows.preset == "Baseline"]
    base_text = (cell(base.dev_score.item(), base.dev_score_low.item(), base.dev_score_high.item())
                 if len(base) else "not run yet")  # fmt: skip
    return (f"table2: {len(rows)}/12 presets, {int(rows.n_seeds.min())}-{int(rows.n_seeds.max())}"
            f" seeds; best {best.preset} dev score "
            f"{cell(best.dev_score, best.dev_score_low, best.dev_score_high)}; Baseline {base_text}")


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--results", type=Path, default=ROOT / "results")
    p.add_argument("--name", help="sweep name (default table2, table2-quick or table2-probe)")
    p.add_argument("--quick", action="store_true", help="the same shape on a slice (minutes)")
    p.add_argument("--probe", nargs="?", const="baseline", choices=("baseline", "heaviest"),
                   help="one row, one seed, at the run's scale: its wall time")  # fmt: skip
    p.add_argument("--model", default="packaged", help="sweeps/run.py --model")
    p.add_argument("--max-train", type=positive_int, help="training examples per task")
    p.add_argument("--max-dev", type=positive_int, help="dev examples per task")
    p.add_argument("--max-len", type=positive_int, help="tokens per sentence (or pair)")
    p.add_argument("--epochs", type=positive_int, help="epochs per run")
    p.add_argument("--seeds", type=positive_int, help="seeds per preset")
    p.add_argument("--cpus", type=positive_int, default=2, help="CPUs per trial")
    p.add_argument("--resume", action="store_true", help="continue the named run")
    p.add_argument("--report", action="store_true", help="only report the results so far")
    args = p.parse_args(argv)
    scale = QUICK if args.quick else FULL
    for key, value in scale.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    default = "table2-probe" if args.probe else "table2-quick" if args.quick else "table2"
    args.name = args.name or default
    if not args.report:
        cmd = sweep_command(args)
        print("$ " + " ".join(c if " " not in c else repr(c) for c in cmd), flush=True)
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT).returncode
        print(f"sweep exit status {code}, {time.perf_counter() - start:.0f} s wall clock")
        if code == 2:
            return 2
    print(report(args.results / args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
