"""Sweep overhead: N trials through ``sweeps/run.py`` against the same N configurations
trained directly, one after another, in one plain Python process.

Both sides run as fresh processes (interpreter start-up and imports count on both), at
concurrency 1, on the same data and backbone; the direct side trains exactly the
configurations the sweep's trials used (read back from ``trials.parquet``), with the same
per-epoch evaluation. Also reported: the driver's start-up to first trial, from launching
``sweeps/run.py`` to the first trial's ``started_at`` (when its code began), and that trial's
own set-up before training (``setup_seconds``: model load, data encoding), which the direct
side pays too.

    python benchmarks/sweep_overhead.py [--quick] [--trials N] [--data-dir DIR] [--address auto]

``--address`` runs the sweep on a Ray instance that is already running (``ray start --head
--num-cpus 2``), as a cluster user does: no Ray start or shutdown inside the timed sweep.

Last line: ``wall-clock ratio sweep/direct: R``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from berter.errors import ArgumentParser, one_line_errors, positive_int

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(args: argparse.Namespace, results: Path) -> tuple[float, float, pd.DataFrame]:
    """Run the sweep; return (total wall seconds, seconds from launch to first trial, the
    trials table in order of start)."""
    data = ["--data-dir", args.data_dir] if args.data_dir else ["--data", "demo"]
    cmd = [
        sys.executable,
        str(ROOT / "sweeps" / "run.py"),
        "--search",
        "lr,dropout",
        *data,
        "--num-samples",
        str(args.trials),
        "--epochs",
        str(args.epochs),
        "--max-train",
        str(args.max_train),
        "--max-dev",
        str(args.max_dev),
        "--max-concurrent",
        "1",
        "--cpus-per-trial",
        str(args.cpus),
        "--scheduler",
        "fifo",
        "--name",
        "overhead",
        "--results",
        str(results),
        *(["--address", args.address] if args.address else []),
    ]
    launched = datetime.now(timezone.utc)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)  # its errors: stderr
    total = time.perf_counter() - start
    trials = pd.read_parquet(results / "overhead" / "trials.parquet").sort_values("started_at")
    first = trials.started_at.iloc[0].to_pydatetime()
    return total, (first - launched).total_seconds(), trials


def trial_configs(trials: pd.DataFrame) -> list[dict]:
    """The Config fields of every trial the sweep ran, in the order of the table."""
    from berter.config import Config

    names = {f.name for f in dataclasses.fields(Config)}
    configs = []
    for row in trials.to_dict("records"):
        cfg = {}
        for k, v in row.items():
            if k in names and k not in ("model", "data_dir"):
                if isinstance(v, float) and math.isnan(v):
                    v = None
                cfg[k] = v.item() if hasattr(v, "item") else v
        configs.append(cfg)
    return configs


def direct(configs_file: str, data_dir: str | None, threads: int) -> None:
    """Child process: load the data once, train every configuration in turn."""
    import torch

    from berter.config import Config
    from berter.data.files import load_data_for
    from berter.train.run import TrainingRun

    torch.set_num_threads(threads)
    configs = json.loads(Path(configs_file).read_text())
    first = Config.from_dict({**configs[0], "data_dir": data_dir})
    data = load_data_for(first)
    times = {"setup": 0.0, "train": 0.0, "fit": 0.0, "per_trial": []}
    for values in configs:
        started = time.perf_counter()
        run = TrainingRun(Config.from_dict({**values, "data_dir": data_dir}), data)
        built = time.perf_counter()
        run.fit()
        times["setup"] += built - started
        times["fit"] += time.perf_counter() - built
        times["train"] += run.train_seconds
        times["per_trial"].append(run.train_seconds)
    Path(configs_file).with_suffix(".times.json").write_text(json.dumps(times))


@one_line_errors
def main() -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 trials on 100 examples per task")
    parser.add_argument("--trials", type=positive_int, default=None)
    parser.add_argument("--data-dir", default=None, help="CS224N data (default: demo set)")
    parser.add_argument("--epochs", type=positive_int, default=1)
    parser.add_argument("--max-train", type=positive_int, default=None)
    parser.add_argument("--max-dev", type=positive_int, default=None)
    parser.add_argument(
        "--cpus", type=positive_int, default=2, help="CPUs per trial (and direct threads)"
    )
    parser.add_argument("--address", help="sweep on this running Ray instance (e.g. auto)")
    parser.add_argument("--direct", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        direct(args.direct, args.data_dir, args.cpus)
        return 0
    args.trials = args.trials or (4 if args.quick else 8)
    args.max_train = args.max_train or (100 if args.quick else 300)
    args.max_dev = args.max_dev or (64 if args.quick else 200)

    try:
        return compare(args)
    except subprocess.CalledProcessError as exc:  # the sweep or the direct side said why above
        return exc.returncode


def compare(args: argparse.Namespace) -> int:
    """Run the sweep, then the same configurations directly; print the comparison."""
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        sweep_s, startup_s, trials = run_sweep(args, results)
        configs = trial_configs(trials)
        cfg_file = results / "configs.json"
        cfg_file.write_text(json.dumps(configs))
        cmd = [sys.executable, __file__, "--direct", str(cfg_file), "--cpus", str(args.cpus)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        direct_s = time.perf_counter() - start
        times = json.loads(cfg_file.with_suffix(".times.json").read_text())

    print(
        f"trials: {len(configs)} x {args.epochs} epoch(s), {args.max_train} train / "
        f"{args.max_dev} dev per task, concurrency 1, {args.cpus} CPU(s)"
        + (f", Ray instance at {args.address}" if args.address else ", private Ray instance")
    )
    print(f"sweeps/run.py: {sweep_s:.1f} s; direct in one process: {direct_s:.1f} s")
    print(
        f"driver start-up to first trial: {startup_s:.1f} s "
        f"(then that trial's model and data set-up: {trials.setup_seconds.iloc[0]:.1f} s)"
    )
    # where the difference goes: training itself, per-trial set-up, and everything else
    # (start-up, evaluation, checkpoints, Tune's bookkeeping, shutdown)
    sweep_train, sweep_setup = trials.train_seconds.sum(), trials.setup_seconds.sum()
    sweep_rest = sweep_s - sweep_train - sweep_setup
    direct_rest = direct_s - times["train"] - times["setup"]
    print(
        f"training: {sweep_train:.1f} s in trials vs {times['train']:.1f} s direct; set-up "
        f"{sweep_setup:.1f} vs {times['setup']:.1f} s; all else {sweep_rest:.1f} vs "
        f"{direct_rest:.1f} s (direct: {times['fit'] - times['train']:.1f} s of it evaluation)"
    )
    ratios = ", ".join(
        f"{a / b:.3f}" for a, b in zip(trials.train_seconds, times["per_trial"], strict=True)
    )
    print(f"training per trial, sweep/direct: {ratios}")
    print(f"wall-clock ratio sweep/direct: {sweep_s / direct_s:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
