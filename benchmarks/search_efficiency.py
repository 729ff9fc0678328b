"""Search efficiency: Optuna TPE + ASHA against exhaustive grid search, in trial-epochs.

Method (a replay, so that every searcher sees exactly the same training noise):

1. Grid table. Every point of a small real-data space (lr x batch size x dropout, 3 x 2 x 2
   = 12 points) is trained for ``--epochs`` epochs with ``TrainingRun`` (strategy=final, the
   packaged backbone, seed 0), and the dev score after every epoch is recorded. Exhaustive
   grid search costs 12 x epochs trial-epochs; its best is the highest dev score any point
   reported after any epoch (the sweep keeps each trial's best checkpoint).
2. Replay. A searcher runs trials one at a time; a trial's configuration is looked up in
   the table instead of being trained, and it "reports" the table's dev score after each
   epoch, paying one trial-epoch per epoch. The cost of a search is the trial-epochs spent
   until some report is within ``--tolerance`` (0.005 = half a point) of the grid's best.
   Searchers are the sweep's own objects (``berter.searcher.make_searcher`` and ``asha``,
   with num_samples = the grid size), driven through Tune's Searcher / TrialScheduler calls:
   - TPE + ASHA, as the sweep runs it: TPE (n_startup_trials = min(10, max(2, n // 3))),
     no configuration run twice, ASHA-stopped trials told to Optuna as pruned, ASHA with
     grace 1 and the sweep's reduction factor for this many epochs (``--reduction-factor``
     overrides it).
   - random + ASHA: Optuna's random sampler, same scheduler (is TPE better than luck?).
   - TPE alone (FIFO): every trial runs all epochs (what ASHA saves).
   - "before" rows: Ray's stock ``OptunaSearch`` and ``ASHAScheduler`` (reduction factor 4),
     the sweep's setup before ``berter.searcher``: a configuration drawn twice is trained
     (and paid) again, and a stopped trial is told as complete with its last score.
   A search that has
   not reached the target after ``--cap`` times the grid's cost is stopped and counted at
   that cost (and reported as a miss). Each searcher is replayed with ``--seeds`` seeds.
   Trials run one after another (a concurrency of one); with more trials in flight, TPE
   sees fewer finished trials when it proposes and ASHA compares against fewer results.

The headline (the last line) is the mean trial-epochs of TPE + ASHA divided by the grid's.
The table is cached in ``--table`` (JSON) so the replay can be rerun without training.

    python benchmarks/search_efficiency.py --quick   # 50 train / 80 dev per task, 2 epochs
    python benchmarks/search_efficiency.py           # 400 train / 400 dev per task, 3 epochs
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]

from berter.errors import (  # noqa: E402
    ArgumentParser,
    non_negative_float,
    one_line_errors,
    positive_float,
    positive_int,
)

DATA = ROOT.parent / "shared" / "data" / "cs224n"
SPACE = {"lr": (5e-5, 1e-4, 2e-4), "batch_size": (16, 32), "dropout": (0.1, 0.3)}


def grid_points() -> list[dict]:
    return [dict(zip(SPACE, values, strict=True)) for values in itertools.product(*SPACE.values())]


def key(point: dict) -> str:
    return ",".join(f"{k}={point[k]:g}" for k in SPACE)


# ----------------------------------------------------------------------------- grid table
def train_grid(args, log) -> dict:
    """Dev score after every epoch of every grid point."""
    import torch

    from berter.config import Config
    from berter.data.encode import get_tokenizer
    from berter.data.files import load_data
    from berter.model.multi_exit import load_backbone
    from berter.train.run import TrainingRun

    torch.set_num_threads(args.threads)
    base = Config(
        data_dir=args.data_dir,
        max_train=args.max_train,
        max_dev=args.max_dev,
        epochs=args.epochs,
        num_threads=args.threads,
        seed=args.seed,
    )
    data = load_data(base.data_dir, base.tasks, base.max_train, base.max_dev, base.seed)
    tokenizer = get_tokenizer(base.model)
    backbone = load_backbone(base.model, base.dropout)
    scores: dict[str, list[float]] = {}
    start = time.perf_counter()
    for point in grid_points():
        cfg = base.replace(**point)
        run = TrainingRun(cfg, data, backbone=copy.deepcopy(backbone), tokenizer=tokenizer)
        scores[key(point)] = []
        for epoch in range(cfg.epochs):
            run.train_epoch()
            dev = run.evaluate("dev")
            run.strategy.end_epoch(epoch, dev.dev_score)
            scores[key(point)].append(float(dev.dev_score))
        log(f"{key(point)}: " + ", ".join(f"{s:.4f}" for s in scores[key(point)]))
    return {
        "settings": settings(args),
        "scores": scores,
        "train_seconds": time.perf_counter() - start,
    }


def settings(args) -> dict:
    return {
        "data_dir": str(args.data_dir),
        "max_train": args.max_train,
        "max_dev": args.max_dev,
        "epochs": args.epochs,
        "seed": args.seed,
        "space": {k: list(v) for k, v in SPACE.items()},
    }


def load_or_train(args, log) -> dict:
    path = Path(args.table)
    if path.is_file() and not args.retrain:
        table = json.loads(path.read_text())
        if table.get("settings") == settings(args):
            log(f"grid table: {path} (cached; --retrain trains it again)")
            return table
    table = train_grid(args, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1))
    log(f"grid table written to {path}")
    return table


# ----------------------------------------------------------------------------- replay
def replay(
    scores: dict[str, list[float]],
    target: float,
    algorithm: str,
    use_asha: bool,
    seed: int,
    cap: int,
    plain: bool = False,
    factor: float | None = None,
) -> tuple[int, bool]:
    """Trial-epochs one search spends until a report reaches the target (or the cap).

    The searcher and scheduler are the sweep's own (``berter.searcher``), driven through
    Tune's Searcher / TrialScheduler calls in the order Tune makes them. ``plain=True``
    replays Ray's stock ``OptunaSearch`` and ``ASHAScheduler`` (reduction factor 4) instead:
    the setup before berter.searcher (repeats paid again, stopped trials told as complete).
    A search whose space runs out before the target (no repeats) is a miss, charged the cap.
    """
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    from berter.sweep.searcher import asha, make_searcher
    from berter.sweep.space import SearchParam, SearchSpace

    epochs = len(next(iter(scores.values())))
    params = [
        SearchParam("lr", "lr", "choice", choices=SPACE["lr"]),
        SearchParam("batch", "batch_size", "choice", choices=SPACE["batch_size"]),
        SearchParam("dropout", "dropout", "choice", choices=SPACE["dropout"]),
    ]
    searcher = make_searcher(
        params, ["v"], algorithm=algorithm, metric="dev_score", mode="max", seed=seed,
        num_samples=len(scores),
    )  # fmt: skip
    scheduler = asha(epochs, 1, factor) if use_asha else None
    if plain:
        searcher = OptunaSearch(
            space=SearchSpace(params, ["v"]), metric="dev_score", mode="max",
            sampler=searcher._sampler,
        )  # fmt: skip
        if use_asha:
            scheduler = ASHAScheduler(time_attr="main_epoch", max_t=epochs, grace_period=1)
    if scheduler is not None:
        scheduler.set_search_properties("dev_score", "max")
    cost = 0
    for number in itertools.count():
        trial_id = str(number)
        config = searcher.suggest(trial_id)
        if config == Searcher.FINISHED:
            return cap, False
        point = {name: config[name] for name in SPACE}
        handle = SimpleNamespace(trial_id=trial_id)
        if scheduler is not None:
            scheduler.on_trial_add(None, handle)
        result: dict = {}
        for epoch, score in enumerate(scores[key(point)], start=1):
            cost += 1
            result = {
                "dev_score": score, "epoch": epoch, "main_epoch": epoch,
                "training_iteration": epoch, "epochs_planned": epochs,
            }  # fmt: skip
            if score >= target:
                return cost, True
            if cost >= cap:
                return cap, False
            searcher.on_trial_result(trial_id, result)
            if scheduler is not None:
                if scheduler.on_trial_result(None, handle, result) == TrialScheduler.STOP:
                    break
        if scheduler is not None:
            scheduler.on_trial_complete(None, handle, result)
        searcher.on_trial_complete(trial_id, result)
    raise AssertionError("unreachable")


def summarise(costs: list[tuple[int, bool]]) -> dict:
    spent = [c for c, _ in costs]
    return {
        "mean": statistics.mean(spent),
        # standard error of the mean: a miss costs the cap, so a few of them move the mean
        "sem": statistics.stdev(spent) / len(spent) ** 0.5 if len(spent) > 1 else 0.0,
        "median": statistics.median(spent),
        "p90": sorted(spent)[int(0.9 * (len(spent) - 1))],
        "misses": sum(not ok for _, ok in costs),
    }


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DATA))
    p.add_argument("--quick", action="store_true", help="smaller data, 2 epochs")
    p.add_argument("--max-train", type=positive_int, help="training examples per task")
    p.add_argument("--max-dev", type=positive_int, help="dev examples per task")
    p.add_argument("--epochs", type=positive_int, help="epochs per grid point (ASHA's max_t)")
    p.add_argument(
        "--seeds", type=positive_int, help="replays per searcher, seeds 0..N-1 (300; 100 quick)"
    )
    p.add_argument(
        "--tolerance", type=non_negative_float, default=0.005, help="dev score below the best"
    )
    p.add_argument(
        "--cap", type=positive_float, default=3.0, help="stop a replay at this x grid cost"
    )
    p.add_argument(
        "--reduction-factor",
        type=positive_float,
        help="ASHA's (default: the sweep's, berter.searcher)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=min(2, os.cpu_count() or 1),
        help="torch threads for the grid (untimed: only its scores are used)",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed of the grid")
    p.add_argument("--table", help="grid table cache (JSON)")
    p.add_argument("--retrain", action="store_true", help="train the grid even if cached")
    args = p.parse_args(argv)
    args.max_train = args.max_train or (50 if args.quick else 400)
    args.max_dev = args.max_dev or (80 if args.quick else 400)
    args.epochs = args.epochs or (2 if args.quick else 3)
    args.seeds = args.seeds or (100 if args.quick else 300)
    if args.reduction_factor is not None and args.reduction_factor <= 1:
        p.error(f"--reduction-factor must be > 1, got {args.reduction_factor}")
    name = "search_grid_quick.json" if args.quick else "search_grid.json"
    args.table = args.table or str(ROOT / "results" / name)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    table = load_or_train(args, log)
    scores = table["scores"]
    best = max(max(s) for s in scores.values())
    target = best - args.tolerance
    grid_cost = len(scores) * args.epochs
    near = [k for k, s in scores.items() if max(s) >= target]
    cap = int(args.cap * grid_cost)

    print(
        "| lr | batch | dropout | " + " | ".join(f"dev e{e + 1}" for e in range(args.epochs)) + " |"
    )
    print("|---|---|---|" + "---|" * args.epochs)
    for point in grid_points():
        s = scores[key(point)]
        cells = " | ".join(f"**{x:.4f}**" if x >= target else f"{x:.4f}" for x in s)
        print(f"| {point['lr']:g} | {point['batch_size']} | {point['dropout']:g} | {cells} |")
    print(
        f"\ngrid best {best:.4f}; target >= {target:.4f}, reached by {len(near)} of "
        f"{len(scores)} points; grid cost {grid_cost} trial-epochs "
        f"(trained in {table['train_seconds'] / 60:.1f} min)\n"
    )
    print("| searcher | mean trial-epochs (s.e.) | median | 90th pct | misses | mean / grid |")
    print("|---|---|---|---|---|---|")
    print(f"| grid (exhaustive) | {grid_cost} (0) | {grid_cost} | {grid_cost} | 0 | 1.00 |")
    headline = None
    for label, algorithm, use_asha, plain in (
        ("TPE + ASHA (as the sweep runs it)", "optuna", True, False),
        ("random + ASHA", "random", True, False),
        ("TPE (FIFO)", "optuna", False, False),
        ("before: stock OptunaSearch (TPE) + ASHA rf 4", "optuna", True, True),
        ("before: stock OptunaSearch (TPE), FIFO", "optuna", False, True),
    ):
        with contextlib.redirect_stdout(io.StringIO()):  # the searcher's "space ran out" lines
            costs = [
                replay(scores, target, algorithm, use_asha, s, cap, plain, args.reduction_factor)
                for s in range(args.seeds)
            ]
        r = summarise(costs)
        ratio = r["mean"] / grid_cost
        headline = headline if headline is not None else ratio
        print(
            f"| {label} | {r['mean']:.1f} ({r['sem']:.1f}) | {r['median']:g} | {r['p90']} | "
            f"{r['misses']}/{args.seeds} | {ratio:.2f} |",
            flush=True,
        )
    print(f"\ntrial-epochs ratio TPE+ASHA/grid: {headline:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
