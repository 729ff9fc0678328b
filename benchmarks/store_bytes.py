"""Bytes a sweep writes to its results store: rewritten at every event, or throttled.

Drives the sweep's own ResultsWriter (the Tune callback) with a simulated sweep on a simulated
clock, no Ray and no training: N trials x E epochs, C at a time, each epoch taking a simulated
minute, each trial reporting every epoch, then saving a checkpoint, then ending, as Tune calls
the callback. The same events go once to a writer that rewrites the three Parquet files at
every event (what a local directory gets, and what an object store got before) and once to a
writer with an object store's throttle (berter.sweep.writer.URI_INTERVAL). Issue 29's target:
bytes linear in trial-epochs, i.e. flat bytes per trial-epoch as the sweep grows.

    python benchmarks/store_bytes.py            # 50, 100, 200 trials x 5 epochs
    python benchmarks/store_bytes.py --quick    # 25, 50 trials x 5 epochs

Last line: ``store_bytes: ...`` (the largest sweep's bytes both ways, and bytes per
trial-epoch from the smallest to the largest sweep).
"""

from __future__ import annotations

import tempfile
from types import SimpleNamespace

from berter.config import Config
from berter.errors import ArgumentParser, one_line_errors, positive_int
from berter.sweep.store import read_results
from berter.sweep.trainable import TrialSpec
from berter.sweep.writer import URI_INTERVAL, ResultsWriter
from berter.variants import preset

TASKS = ("sst", "para", "sts")


class FakeTrial(SimpleNamespace):
    def __str__(self) -> str:
        return f"baseline_{self.trial_id}"


def epoch_result(epoch: int, epochs: int, dev: float) -> dict:
    """What a trial reports after an epoch (the fields the writer reads)."""
    return {
        "epoch": epoch, "main_epoch": epoch, "epochs_planned": epochs, "phase": "main",
        "dev_score": dev, "sst_acc": dev, "para_acc": dev, "sts_corr": dev,
        "avg_exit_layer": 4.5, "num_layers": 6, "layer_scores": [dev - 0.05 * k for k in range(6)],
        "train_loss": 1.0 / epoch, "epoch_seconds": 60.0, "train_seconds": 60.0 * epoch,
        "diverged": False, "started_at": "2026-12-02T00:00:00+00:00", "data_source": "cs224n",
        "exit_table": [
            {"task": task, "exit_method": "confidence", "threshold": t / 10, "metric": dev,
             "avg_exit_layer": 6 - t / 2}
            for task in TASKS for t in range(1, 10)
        ],
    }  # fmt: skip


EPOCH_SECONDS = 60.0  # simulated length of one epoch of the C trials running


def simulate(trials: int, epochs: int, at_once: int, interval: float) -> tuple[int, int]:
    """Bytes written by one simulated sweep, and the trial rows read back at its end."""
    variant = preset("Baseline")
    base = Config(tasks=TASKS).to_dict()
    clock = [0.0]
    with tempfile.TemporaryDirectory() as root:
        writer = ResultsWriter(root, TrialSpec(base, [variant]), "sim", TASKS, False,
                               min_interval=interval, clock=lambda: clock[0])  # fmt: skip
        writer.setup()
        writer.on_step_begin(0, [])  # Tune's first step (a resumed sweep's pruning: nothing)
        for wave in range(0, trials, at_once):
            running = [
                FakeTrial(trial_id=f"{k:05d}", config={"variant": variant.name, "lr": 1e-4},
                          last_result={}, run_metadata=SimpleNamespace(  # Tune's bookkeeping
                              checkpoint_manager=SimpleNamespace(best_checkpoint_result=None,
                                                                 latest_checkpoint_result=None)))  # fmt: skip
                for k in range(wave, min(wave + at_once, trials))
            ]
            for t in running:
                writer.on_trial_start(0, [], t)
            for epoch in range(1, epochs + 1):
                for t in running:  # their reports spread over the epoch
                    clock[0] += EPOCH_SECONDS / len(running)
                    writer.on_step_begin(0, [])
                    t.last_result = epoch_result(epoch, epochs, 0.5 + 0.01 * epoch)
                    writer.on_trial_result(0, [], t, t.last_result)
                    path = f"{root}/ray/{t}/checkpoint_{epoch:06d}"
                    writer.on_checkpoint(0, [], t, SimpleNamespace(path=path))
            for t in running:
                writer.on_trial_complete(0, [], t)
        writer.on_experiment_end([])
        return writer.bytes_written, len(read_results(root)["trials"])


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="25 and 50 trials")
    p.add_argument("--trials", type=positive_int, nargs="+", help="sweep sizes (trials)")
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs per trial")
    p.add_argument("--at-once", type=positive_int, default=8, help="trials running at once")
    args = p.parse_args(argv)
    sizes = args.trials or ([25, 50] if args.quick else [50, 100, 200])
    print("| trials | trial-epochs | mode | bytes written | bytes per trial-epoch |")
    print("|---|---|---|---|---|")
    per = {}
    for n in sizes:
        for parts in (False, True):
            written, rows = simulate(n, args.epochs, args.at_once, URI_INTERVAL if parts else 0.0)
            if rows != n:
                raise SystemExit(f"store_bytes: read back {rows} trial rows of {n}")
            mode = f"at most every {URI_INTERVAL:.0f} s" if parts else "every event"
            per[(n, parts)] = (written, written / (n * args.epochs))
            print(f"| {n} | {n * args.epochs} | {mode} | {written:,} | "
                  f"{written / (n * args.epochs):,.0f} |")  # fmt: skip
    small, large = sizes[0], sizes[-1]
    rewrite, part = per[(large, False)][0], per[(large, True)][0]
    print(
        f"store_bytes: {large} trials x {args.epochs} epochs: {rewrite / 1e6:.1f} MB rewriting at "
        f"every event, {part / 1e6:.1f} MB throttled ({rewrite / part:.1f}x less); bytes per "
        f"trial-epoch {small} -> {large} trials: throttled {per[(small, True)][1]:,.0f} -> "
        f"{per[(large, True)][1]:,.0f}, every event {per[(small, False)][1]:,.0f} -> "
        f"{per[(large, False)][1]:,.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
