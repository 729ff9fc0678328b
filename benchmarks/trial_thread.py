"""Trial thread: the same training run in a plain process and inside a Ray worker, on the
worker's main thread and on a second thread (where Tune runs a function trainable).

Explains the in-trial training slowdown of the sweep-overhead benchmark: each mode trains
one epoch of the same configuration, alternating modes, and the last line is the ratio of
the Ray worker's second thread to the plain process's main thread (median seconds).
"""

from __future__ import annotations

import logging
import statistics
import threading
from typing import Any

from berter.errors import ArgumentParser, one_line_errors, positive_int

DEFAULT_DATA = "../shared/data/cs224n"


def fit_seconds(data_dir: str, max_train: int, threads: int) -> float:
    """Train one epoch in the calling thread; seconds of training (no set-up, no eval)."""
    from berter.config import Config
    from berter.train.run import TrainingRun

    cfg = Config(
        data_dir=data_dir,
        max_train=max_train,
        max_dev=50,
        epochs=1,
        concat="before_embed",
        num_threads=threads,
    )
    run = TrainingRun(cfg)  # loads the data and sets the thread count
    run.fit()
    return run.train_seconds


def in_thread(*args: Any) -> float:
    """``fit_seconds`` on a second thread while the calling thread waits, as Tune does."""
    out: list[float] = []
    worker = threading.Thread(target=lambda: out.append(fit_seconds(*args)))
    worker.start()
    worker.join()
    return out[0]


@one_line_errors
def main() -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 examples per task, 1 repeat")
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    parser.add_argument("--max-train", type=positive_int, default=400, help="per task")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.max_train, args.repeats = 200, 1

    from berter.data.files import check

    check(args.data_dir)  # a bad data directory fails here, before Ray starts
    import ray

    ray.init(
        address="local", num_cpus=args.threads, include_dashboard=False, logging_level=logging.ERROR
    )
    remote_main = ray.remote(num_cpus=args.threads)(fit_seconds)
    remote_thread = ray.remote(num_cpus=args.threads)(in_thread)
    fit_args = (args.data_dir, args.max_train, args.threads)
    modes = {
        "plain process, main thread": lambda: fit_seconds(*fit_args),
        "plain process, second thread": lambda: in_thread(*fit_args),
        "Ray worker, main thread": lambda: ray.get(remote_main.remote(*fit_args)),
        "Ray worker, second thread": lambda: ray.get(remote_thread.remote(*fit_args)),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, run in modes.items():
            times[name].append(run())
    ray.shutdown()
    print(
        f"{args.max_train} train per task, 1 epoch, {args.threads} threads, "
        f"{args.repeats} repeat(s); seconds of training"
    )
    for name, values in times.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:30s} median {statistics.median(values):6.1f}  ({shown})")
    ratio = statistics.median(times["Ray worker, second thread"]) / statistics.median(
        times["plain process, main thread"]
    )
    print(f"Ray worker second thread / plain main thread: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
