"""Checkpoint sizes: what the README's demo sweep leaves on disk under each ``--keep-checkpoints``.

Runs ``python sweeps/run.py --search lr,batch,dropout --data demo`` (the README's demo
sweep: 4 trials, 2 epochs, 200 training examples per task, the packaged all-MiniLM-L6-v2,
ASHA) as a fresh process once per mode, into a temporary results root, and reports the
size of its results directory at the end and its peak while the sweep ran (polled every
half second), against the number of trials times the weights of one trial (the model's
state dict as ``torch.save`` writes it, read from a kept checkpoint's ``state.pt``).
Target (issue 30): the results directory of ``best`` (the default) at most 1.2x
(trials x weights).

    python benchmarks/checkpoint_sizes.py [--quick] [--keep best,last,none]

``--quick`` runs 2 trials on 50 examples per task (the same two epochs). The last line is
``results directory / (trials x weights), keep best: R``.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from berter.errors import ArgumentParser, ConfigError, one_line_errors, positive_int

ROOT = Path(__file__).resolve().parents[1]

MODES = ("best", "last", "none")
POLL_S = 0.5


def usage(directory: Path) -> int:
    """Bytes of the files under ``directory`` (0 while it does not exist)."""
    total = 0
    for path in directory.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:  # deleted while we looked: Tune trims as the sweep runs
            pass
    return total


class Peak(threading.Thread):
    """The largest size of a directory seen while it is polled."""

    def __init__(self, directory: Path):
        super().__init__(daemon=True)
        self.directory, self.peak, self.done = directory, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(POLL_S):
            self.peak = max(self.peak, usage(self.directory))


def weights_bytes(directory: Path) -> int | None:
    """The size of one trial's weights: a kept checkpoint's model state dict, saved alone."""
    import torch

    from berter.sweep.trainable import CHECKPOINT_FILE

    found = sorted(directory.rglob(CHECKPOINT_FILE))
    if not found:
        return None
    state = torch.load(found[0], map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    torch.save(state["model"], buffer)
    return buffer.getbuffer().nbytes


def sweep(args: argparse.Namespace, root: Path, keep: str) -> dict | None:
    """One demo sweep with ``--keep-checkpoints keep``: its sizes and trial count; None when
    the sweep refused its input (it printed its one-line error)."""
    import pandas as pd

    name = f"keep-{keep}"
    cmd = [
        sys.executable, str(ROOT / "sweeps" / "run.py"), "--search", "lr,batch,dropout",
        "--data", "demo", "--num-samples", str(args.trials), "--max-train", str(args.max_train),
        "--results", str(root), "--name", name, "--keep-checkpoints", keep,
    ]  # fmt: skip
    directory = root / name
    peak = Peak(directory)
    peak.start()
    started = time.perf_counter()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}  # this checkout's code, not another install's
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    peak.done.set()
    peak.join()
    if proc.returncode == 2:
        return None
    trials = pd.read_parquet(directory / "trials.parquet")
    return {
        "keep": keep,
        "rc": proc.returncode,
        "seconds": seconds,
        "trials": len(trials),
        "statuses": trials.status.value_counts().to_dict(),
        "total": usage(directory),
        "peak": max(peak.peak, usage(directory)),
        "checkpoints": sum(usage(d) for d in directory.glob("ray/*/checkpoint_*")),
        "weights": weights_bytes(directory),
        "summary": [ln for ln in proc.stdout.splitlines() if ln.startswith(("disk:", "sweep "))],
    }


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 trials on 50 examples per task")
    p.add_argument("--trials", type=positive_int, help="trials per sweep (default 4; quick 2)")
    p.add_argument(
        "--max-train", type=positive_int, help="examples per task (default 200; quick 50)"
    )
    p.add_argument("--keep", default=",".join(MODES), help="modes to run, comma-separated")
    args = p.parse_args(argv)
    args.trials = args.trials or (2 if args.quick else 4)
    args.max_train = args.max_train or (50 if args.quick else 200)
    modes = [m.strip() for m in args.keep.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"--keep {args.keep!r}: give some of {', '.join(MODES)}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ckpt-sizes-") as tmp:
        for keep in modes:
            row = sweep(args, Path(tmp), keep)
            if row is None:
                return 2
            rows.append(row)
            log(
                f"keep {keep}: {row['trials']} trials {row['statuses']}, exit {row['rc']}, "
                f"{row['seconds']:.0f}s; results {mb(row['total'])} (checkpoints "
                f"{mb(row['checkpoints'])}), peak while running {mb(row['peak'])}"
            )
    weights = next((r["weights"] for r in rows if r["weights"]), None)
    if weights is None:
        log("no checkpoint kept: the weights size is unknown (run a mode other than none)")
        return 1
    log(f"weights of one trial (model state dict): {mb(weights)}")
    lines = []
    for row in rows:
        budget = row["trials"] * weights
        lines.append(
            f"results directory / (trials x weights), keep {row['keep']}: "
            f"{row['total'] / budget:.2f} ({mb(row['total'])} / {row['trials']} x {mb(weights)}; "
            f"peak while running {row['peak'] / budget:.2f})"
        )
    lines.sort(key=lambda line: "keep best:" in line)  # the target's line last
    log(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n".join(lines), flush=True)
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
