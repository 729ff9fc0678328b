"""Fine-tuning strategy benchmark: dev score at the final layer and averaged over all exits.

Each strategy (final, joint, two_stage, alternating, smart_alt, plus SLF + joint) fine-tunes
the packaged all-MiniLM-L6-v2 on capped slices of the CS224N data, with no early exit, and
is scored on dev at every exit. ``cfg.epochs`` counts epochs per stage, so two_stage trains
twice as many epochs and SLF adds a fraction of one (the "epochs run" column).

    python benchmarks/strategies.py                         # 2000 train / 1000 dev per task
    python benchmarks/strategies.py --quick                 # every row, 150 train / 150 dev per task
    python benchmarks/strategies.py --max-train 300 --strategies final,joint   # two rows

Results are appended to ``--out`` (JSON lines) as each run finishes, so an interrupted
benchmark keeps what it has. The Markdown table is printed at the end, then the headline:
the strategy with the best mean over exits (what an early-exit model is trained for) and
its final-layer score against ``final``'s, when both rows ran.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from berter.config import Config  # noqa: E402
from berter.errors import ArgumentParser, one_line_errors, positive_float, positive_int  # noqa: E402
from berter.train.callbacks import EpochLog  # noqa: E402
from berter.train.run import train_and_evaluate  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cs224n"
RUNS = {  # row label -> axis values
    "final": {"strategy": "final"},
    "joint": {"strategy": "joint"},
    "two_stage": {"strategy": "two_stage"},
    "alternating": {"strategy": "alternating"},
    "smart_alt": {"strategy": "smart_alt"},
    "slf+joint": {"strategy": "joint", "slf": "on"},
}


def table(rows: list[dict]) -> str:
    head = (
        "| strategy | dev score (final layer) | dev score (mean over exits) | best layer "
        "| SST | Para | STS r | epochs run | train s |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['dev_score']:.4f} | {r['dev_score_mean_exits']:.4f} "
            f"| {r['best_layer']} | {r['sst_acc']:.3f} | {r['para_acc']:.3f} "
            f"| {r['sts_corr']:.3f} | {r['epochs_done']} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def headline(rows: list[dict]) -> str:
    """The best strategy for early exit, and what it costs the final layer against ``final``."""
    best = max(rows, key=lambda r: r["dev_score_mean_exits"])
    line = (
        f"best mean over exits: {best['label']} {best['dev_score_mean_exits']:.4f}"
        f" (final layer {best['dev_score']:.4f})"
    )
    final = next((r for r in rows if r["label"] == "final"), None)
    if final is not None and final["dev_score"] > 0:
        line += f"; final-layer score {best['label']}/final: {best['dev_score'] / final['dev_score']:.3f}"
    return line


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DATA))
    p.add_argument("--quick", action="store_true", help="150 train / 150 dev per task, every row")
    p.add_argument(
        "--max-train", type=positive_int, default=None, help="training examples per task (2000)"
    )
    p.add_argument(
        "--max-dev", type=positive_int, default=None, help="dev examples per task (1000)"
    )
    p.add_argument("--epochs", type=positive_int, default=1)
    p.add_argument("--lr", type=positive_float, default=Config().lr)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategies", default=",".join(RUNS), help="comma-separated row labels")
    p.add_argument("--out", default=str(ROOT / "results" / "strategies.jsonl"))
    args = p.parse_args(argv)
    max_train = args.max_train or (150 if args.quick else 2000)
    max_dev = args.max_dev or (150 if args.quick else 1000)

    labels = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in labels if s not in RUNS]
    if unknown:
        print(
            f"error: unknown strategy row(s) {', '.join(unknown)}; rows: {', '.join(RUNS)}",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in labels:
        cfg = Config(
            data_dir=args.data_dir,
            max_train=max_train,
            max_dev=max_dev,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            num_threads=args.threads,
            **RUNS[label],
        )
        start = time.perf_counter()
        result = train_and_evaluate(cfg, callbacks=[EpochLog()])
        row = {"label": label, **result, "wall_seconds": time.perf_counter() - start}
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        print(
            f"{label}: dev {row['dev_score']:.4f}, mean over exits {row['dev_score_mean_exits']:.4f}",
            file=sys.stderr,
            flush=True,
        )
    print(table(rows))
    print(headline(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
