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

Scale (default): 400 training and 400 dev examples per task, 3 epochs, 3 seeds, the packaged
6-layer backbone: sized for the 36 runs to finish within one working session of a 2-core
machine (1.5 hours estimated; the rows run so far put it nearer 2), because a background run
does not outlive the session's machine; 1,000 per task measured 3.5-5.5 hours by the probes
and was lost after its first row (REPRODUCTION.md).

``--markdown`` prints the tables REPRODUCTION.md shows: per preset beside the paper's row, and
each of the paper's claims with its verdict from paired differences over seeds (``CLAIMS``).

Last line: ``table2: ...`` (rows done, best preset and its dev score interval, the Baseline's).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from berter.errors import ArgumentParser, one_line_errors, positive_int  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cs224n"
COLUMNS = ("dev_score", "dev_score_exit", "sst_acc", "para_acc", "sts_corr", "train_seconds",
           "avg_exit_layer", "speedup_wall")  # fmt: skip
# --quick: a smoke run of the same shape (every preset, 2 seeds, every column, every verdict) in
# about a minute, on a small random backbone (quick_backbone) with the speedup timed on 8
# examples per task: its numbers are noise, the full run's are the results
QUICK = {"max_train": 16, "max_dev": 24, "epochs": 1, "seeds": 2, "max_len": 32, "cpus": 1,
         "speedup_examples": 8, "model": "quick"}  # fmt: skip
FULL = {"max_train": 400, "max_dev": 400, "epochs": 3, "seeds": 3, "max_len": 128, "cpus": 2,
        "speedup_examples": 64, "model": "packaged"}  # fmt: skip


TOLERANCE = 0.01  # "keeps the score": the paired difference's interval stays above -1 point


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims, checked on pairs of rows: ``row`` against ``reference``.

    ``sign`` +1: the claim says ``row`` is higher on ``metric``; -1: lower. ``kind`` "keeps":
    ``row`` loses at most TOLERANCE and is faster (speedup_wall above 1); "best": ``row`` beats
    every other row (the pairs are filled in from the results). The dev score a claim compares
    is ``dev_score_exit``: each row's score as it is used, at its calibrated exit operating
    point for the early-exit rows (the paper prints those rows' scores with early exit on) and
    the final layer's otherwise (there the two are equal)."""

    text: str
    pairs: tuple[tuple[str, str], ...] = ()
    metric: str = "dev_score_exit"
    sign: int = 1
    kind: str = "differs"


CLAIMS: tuple[Claim, ...] = (
    Claim("Concatenation before the embedding beats after",
          (("SLF + Conc Before Embed", "SLF"),)),
    Claim("SLF improves every row it is added to",
          (("SLF", "Baseline"), ("SLF + Early Exiting", "Early Exiting"))),
    Claim("Smart Alternating adds to SLF",
          (("SLF + Smart Alt", "SLF"), ("SLF + Smart Alt + Early Exit", "SLF + Early Exiting"))),
    Claim("Early exit keeps the score while saving layers",
          (("Early Exiting", "Baseline"), ("Full SMART + Early Exiting", "Full SMART"),
           ("SLF + Early Exiting", "SLF"), ("SLF + Smart Alt + Early Exit", "SLF + Smart Alt")),
          kind="keeps"),
    Claim("The cosine-loss rows train fastest",
          (("Cos Loss + Early Exiting", "Early Exiting"),
           ("SLF + Smart Alt + Early Exit + Cos Loss", "SLF + Smart Alt + Early Exit")),
          metric="train_seconds", sign=-1),
    Claim("SMART on all tasks hurts SST", (("Full SMART", "Baseline"),
          ("Full SMART + Early Exiting", "Early Exiting")), metric="sst_acc", sign=-1),
    Claim("SMART on all tasks hurts STS", (("Full SMART", "Baseline"),
          ("Full SMART + Early Exiting", "Early Exiting")), metric="sts_corr", sign=-1),
    Claim("SLF + Smart Alt + Early Exit is the best row", kind="best"),
)  # fmt: skip
BEST_ROW = "SLF + Smart Alt + Early Exit"


def axes_apart(row: str, reference: str) -> str:
    """The axes on which two paper rows differ (more than one: the comparison is confounded)."""
    from berter.variants import PAPER_PRESETS

    a, b = PAPER_PRESETS[row], PAPER_PRESETS[reference]
    return ", ".join(f"{k}={a[k]}" for k in a if a[k] != b[k])


def paired(trials, row: str, reference: str, metric: str):
    """Mean paired difference row - reference over the seeds both finished, and its 95%
    t-interval (with 3 seeds a percentile bootstrap cannot be wider than the spread of the
    three differences; the t-interval is the honest one at this n)."""
    from berter.results import finished_runs, per_seed, t_interval

    runs = finished_runs(trials)
    mine = per_seed(runs[runs.preset == row], (metric,))
    base = per_seed(runs[runs.preset == reference], (metric,))
    common = mine.index.intersection(base.index)
    return t_interval((mine.loc[common, metric] - base.loc[common, metric]).tolist())


def verdict(interval, sign: int, kind: str = "differs", faster=None) -> str:
    """supported / not supported / reversed / n=1 from a paired interval."""
    if interval.n == 0:
        return "not run"
    if interval.n == 1:
        return "n=1, no verdict"
    low, high = sign * interval.low, sign * interval.high
    low, high = min(low, high), max(low, high)
    if kind == "keeps":
        if low >= -TOLERANCE and (faster is None or faster.low > 1.0):
            return "supported"
        return "reversed" if high < -TOLERANCE else "not supported"
    if low > 0:
        return "supported"
    return "reversed" if high < 0 else "not supported"


def overall_verdict(verdicts: list[str], kind: str = "differs") -> str:
    """A claim's verdict from its pairs' (a pair whose rows are not done yet says nothing).

    "best": reversed when any other row is ahead of it beyond the spread of the seeds,
    supported only when it is ahead of every one. Otherwise one verdict when the pairs agree,
    else how many pairs say what ("SLF improves *every* row" needs all of them)."""
    judged = [v for v in verdicts if v != "not run"]
    if not judged:
        return "not run"
    if kind == "best":
        if "reversed" in judged:
            return "reversed"
        return "supported" if set(judged) == {"supported"} else "not supported"
    if len(set(judged)) == 1:
        return judged[0]
    counts = (f"{judged.count(v)} {v}" for v in ("supported", "not supported", "reversed"))
    return "mixed: " + ", ".join(c for c in counts if not c.startswith("0 "))


def claim_rows(trials) -> list[dict[str, str]]:
    """One row per (claim, pair): the paired difference, its interval, the axes apart, the
    verdict; a claim's first row carries the claim's overall verdict."""
    from berter.results import finished_runs, per_seed, summarise_seeds, t_interval

    runs = finished_runs(trials)
    done = list(dict.fromkeys(runs.preset))
    out = []
    for claim in CLAIMS:
        pairs = claim.pairs
        if claim.kind == "best":
            pairs = tuple((BEST_ROW, other) for other in done if other != BEST_ROW)
        verdicts, lines = [], []
        for row, reference in pairs:
            d = paired(trials, row, reference, claim.metric)
            faster = None
            if claim.kind == "keeps":
                seeds = per_seed(runs[runs.preset == row], ("speedup_wall",))
                faster = t_interval(seeds["speedup_wall"].tolist())
            v = verdict(d, claim.sign, claim.kind, faster)
            verdicts.append(v)
            digits = 0 if claim.metric == "train_seconds" else 3
            text = f"{row} - {reference}: {cell(d.mean, d.low, d.high, digits)}"
            if faster is not None:
                text += f"; speedup {cell(faster.mean, faster.low, faster.high, 2)}"
            lines.append({"pair": text, "apart": axes_apart(row, reference), "verdict": v})
        if claim.kind == "best" and len(done):
            means = summarise_seeds(trials, by="preset", metrics=(claim.metric,))
            top = means.sort_values(claim.metric).iloc[-1].preset
            lines.insert(0, {"pair": f"highest mean {claim.metric}: {top}", "apart": "",
                             "verdict": ""})  # fmt: skip
        overall = overall_verdict(verdicts, claim.kind)
        for i, line in enumerate(lines):
            out.append({"claim": claim.text if i == 0 else "", "overall": overall if i == 0 else "",
                        "metric": claim.metric if i == 0 else "", **line})  # fmt: skip
    return out


def markdown(directory: Path) -> str:
    """REPRODUCTION.md's tables: per preset (mean [95% CI] over seeds) beside the paper's
    printed row, then the claims."""
    import pandas as pd

    from berter.report.render import markdown_table
    from berter.results import read_results, summarise_seeds
    from berter.variants import PAPER_TABLE2

    trials = read_results(directory)["trials"]
    rows = summarise_seeds(trials, by="preset")
    table = []
    for _, r in rows.iterrows():
        paper = PAPER_TABLE2.get(r.preset, {})
        line = {"preset": r.preset, "n": int(r.n_seeds)}
        for c in COLUMNS:
            line[c] = cell(r[c], r[f"{c}_low"], r[f"{c}_high"], 0 if c == "train_seconds" else 3)
        line["paper dev / SST / para / STS / minutes"] = (
            " / ".join(f"{paper[k]:.3f}" for k in ("dev_score", "sst_acc", "para_acc", "sts_corr"))
            + f" / {paper['train_minutes']}" if paper else "-"
        )
        table.append(line)
    return (markdown_table(pd.DataFrame(table)) + "\n\n"
            + markdown_table(pd.DataFrame(claim_rows(trials))) + "\n")  # fmt: skip


def quick_backbone(results: Path) -> str:
    """--quick's backbone: the packaged model's six layers and tokenizer at a sixth of its
    width, random weights, written once under the results directory. --quick checks that every
    preset trains with its seeds and that every column and verdict comes out; its scores are
    noise at any backbone on 16 examples, and the packaged model's training took most of
    --quick's time."""
    path = results / "quick-backbone"
    if not (path / "config.json").exists():
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from berter.data.encode import packaged_model_path

        cfg = AutoConfig.from_pretrained(packaged_model_path())
        cfg.update({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2})
        torch.manual_seed(0)
        AutoModel.from_config(cfg).save_pretrained(path)
        AutoTokenizer.from_pretrained(packaged_model_path()).save_pretrained(path)
    return str(path)


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
            "--cpus-per-trial", str(args.cpus), "--speedup-examples", str(args.speedup_examples),
            *([] if args.quick else ["--max-concurrent", "1"])]  # fmt: skip


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
    p.add_argument("--model", help="sweeps/run.py --model (default packaged; --quick: a "
                   "random 6-layer 64-wide BERT with the packaged tokenizer)")  # fmt: skip
    p.add_argument("--max-train", type=positive_int, help="training examples per task")
    p.add_argument("--max-dev", type=positive_int, help="dev examples per task")
    p.add_argument("--max-len", type=positive_int, help="tokens per sentence (or pair)")
    p.add_argument("--epochs", type=positive_int, help="epochs per run")
    p.add_argument("--seeds", type=positive_int, help="seeds per preset")
    p.add_argument("--cpus", type=positive_int,
                   help="CPUs per trial (full run 2: one trial at a time, timed alone; --quick 1)")  # fmt: skip
    p.add_argument("--speedup-examples", type=positive_int,
                   help="dev examples per task timed for the speedup (full run 64; --quick 8)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the named run")
    p.add_argument("--report", action="store_true", help="only report the results so far")
    p.add_argument("--markdown", action="store_true",
                   help="only print REPRODUCTION.md's tables (presets, claims) of the results so far")  # fmt: skip
    args = p.parse_args(argv)
    scale = QUICK if args.quick else FULL
    for key, value in scale.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    default = "table2-probe" if args.probe else "table2-quick" if args.quick else "table2"
    args.name = args.name or default
    if args.quick and args.model == "quick" and not (args.report or args.markdown or args.resume):
        args.model = quick_backbone(args.results)
    if args.markdown:
        print(markdown(args.results / args.name))
        return 0
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
