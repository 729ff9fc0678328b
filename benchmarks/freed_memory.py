"""Training with glibc's default allocator settings against ``keep_freed_memory`` (on by default).

Each side is a fresh process that loads the data once and trains the same configurations one
after another (1 epoch each, as the sweep-overhead benchmark's direct side does). Reported per
side: seconds of training, minor page faults and system CPU seconds of the whole process. The
two sides alternate (default, kept, kept, default, ...) so that drift in the machine's speed
falls on both.

    python benchmarks/freed_memory.py [--quick] [--data-dir DIR] [--max-train N] [--repeats R]

Last line: ``training time, glibc default / freed memory kept: R``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from berter.errors import ArgumentParser, one_line_errors, positive_int

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cs224n"
CONFIGS = [{"lr": 4.7e-5, "dropout": 0.36}, {"lr": 5.9e-5, "dropout": 0.27}, {"lr": 2.7e-4, "dropout": 0.12}]  # fmt: skip


def child(mode: str, data_dir: str | None, max_train: int, max_dev: int, configs: int) -> None:
    """Train the configurations; print one JSON line of seconds, faults and system time."""
    import torch

    import berter.train.run as train
    from berter.config import Config
    from berter.data.files import load_data_for

    if mode == "default":
        train.keep_freed_memory = lambda: False  # TrainingRun calls it through the module
    torch.set_num_threads(2)
    base = {"data_dir": data_dir, "max_train": max_train, "max_dev": max_dev, "epochs": 1}
    data = load_data_for(Config.from_dict(base))
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = 0.0
    for values in CONFIGS[:configs]:
        run = train.TrainingRun(Config.from_dict({**base, **values}), data)
        run.fit()
        seconds += run.train_seconds
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "train": seconds,
        "faults": after.ru_minflt - before.ru_minflt,
        "system": after.ru_stime - before.ru_stime,
    }))  # fmt: skip


@one_line_errors
def main() -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 train per task, 2 configs")
    parser.add_argument("--data-dir", default=str(DATA) if DATA.is_dir() else None)
    parser.add_argument("--max-train", type=positive_int, default=None)
    parser.add_argument("--max-dev", type=positive_int, default=200)
    parser.add_argument("--configs", type=positive_int, default=None, help=f"1-{len(CONFIGS)}")
    parser.add_argument("--repeats", type=positive_int, default=1, help="pairs of runs")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    max_train = args.max_train or (200 if args.quick else 1000)
    configs = args.configs or (2 if args.quick else 3)
    if configs > len(CONFIGS):
        parser.error(f"--configs: at most {len(CONFIGS)}, got {configs}")
    if args.child:
        child(args.child, args.data_dir, max_train, args.max_dev, configs)
        return 0

    runs: dict[str, list[dict]] = {"default": [], "kept": []}
    for r in range(args.repeats):
        for mode in ("default", "kept") if r % 2 == 0 else ("kept", "default"):
            cmd = [sys.executable, __file__, "--child", mode, "--max-train", str(max_train),
                   "--max-dev", str(args.max_dev), "--configs", str(configs)]  # fmt: skip
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if out.returncode:  # the child's one-line error (exit 2), or all it said
                print(out.stderr.strip() if out.returncode == 2 else out.stderr, file=sys.stderr)
                return out.returncode
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            m = runs[mode][-1]
            print(f"{mode:8s} training {m['train']:.1f} s, {m['faults']:,} minor page faults, "
                  f"{m['system']:.1f} s system time")  # fmt: skip

    print(
        f"{configs} configuration(s) x 1 epoch, {max_train} train / {args.max_dev} dev per task, "
        f"2 threads, data: {args.data_dir or 'demo set'}"
    )
    med = {mode: statistics.median(m["train"] for m in ms) for mode, ms in runs.items()}
    print(f"training time, glibc default / freed memory kept: {med['default'] / med['kept']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
