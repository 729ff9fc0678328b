"""Training throughput: our loop against the transformers ``Trainer``, and the cost of multi-exit training.

1. ``berter`` vs ``Trainer``, plain and tuned. The same SST training examples (the capped
   train set minus the calibration slice), the same tokenizer output (max length 128), the
   packaged all-MiniLM-L6-v2 backbone, batch 16, lr, weight decay, warmup, gradient
   clipping at 1.0, dropout, one epoch, one seed, the same torch thread count. Ours:
   ``TrainingRun`` with ``strategy=final`` (length-bucketed batches padded per batch, one
   host sync per epoch, fused AdamW); the clock wraps the whole ``train_epoch()`` call, so
   building the epoch's batches counts too. Theirs: ``AutoModelForSequenceClassification``
   (5 labels) with ``DataCollatorWithPadding`` (dynamic padding); the clock wraps
   ``trainer.train()``. The plain ``Trainer`` keeps its defaults (random batches; its
   default optimiser is already fused AdamW, ``adamw_torch_fused``, with torch >= 2.8). The
   tuned one is set up as a user who tunes it would: the length-grouped sampler
   (``group_by_length=True`` before transformers 5, ``train_sampling_strategy=
   "group_by_length"`` since: ``LengthGroupedSampler``, random mega-batches of
   min(50, n / (4 x batch)) batches, each sorted by length) and ``optim="adamw_torch_fused"``
   named explicitly (torch's fused AdamW kernel runs on the CPU since torch 2.4). Data
   loader workers stay at 0 on every side: a worker's CPU seconds are another process's,
   which the CPU-time clock would not see. The script logs the sampler and optimiser each
   ``Trainer`` ended up with and every side's torch thread count while it trained. Model
   loading and tokenisation are outside all clocks. It also logs each side's padding:
   padded tokens per real token over the epoch's batches.
2. Multi-exit overhead: ``strategy=joint`` (the loss of all six exits at every step) against
   ``strategy=final`` (the last exit only), on the same three-task data, one epoch each.
3. Weight-average overhead: ``strategy=final`` with ``ema_decay=0.999`` (an EMA update of
   every weight after each optimiser step, and the swaps at the epoch's ends) against
   ``strategy=final`` without, as in 2.

The CPU is shared, so only ratios from the same run mean anything: every round runs both
sides back to back, alternating which goes first, after one discarded warm-up round; the
headline is the median of the per-round ratios (the three sides of part 1 run in one
round, in rotating order). Each side is timed in wall seconds and in
process CPU seconds; the headlines use CPU seconds, which other jobs on the machine barely
move (with one thread, CPU time is the wall time of a quiet machine), and the wall-clock
ratios are printed beside them. The last line printed is the headline.
Both sides use one torch thread by default: on a loaded two-core machine two OpenMP threads
wait on each other at every parallel region and a step can take 5-10 times longer, with a
spread that swamps the comparison.

    python benchmarks/throughput.py --quick        # 300 SST examples, 70 per task, 2 rounds
    python benchmarks/throughput.py                # 2,000 SST examples, 600 per task
    python benchmarks/throughput.py --only ema     # part 3 alone

``--profile SIDE`` runs one side of part 1 alone (its warm-up, then ``--rounds`` rounds) for
a sampling profiler attached from outside; its last line is that side's median CPU seconds:

    py-spy record --format raw -o berter.txt -- python benchmarks/throughput.py --profile berter
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from berter.config import Config  # noqa: E402
from berter.data.encode import get_tokenizer, packaged_model_path  # noqa: E402
from berter.data.files import load_data  # noqa: E402
from berter.errors import ArgumentParser, one_line_errors, positive_int  # noqa: E402
from berter.model.multi_exit import load_backbone  # noqa: E402
from berter.train.run import TrainingRun  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cs224n"
SIDES = ("berter", "Trainer", "Trainer tuned")  # part 1


class Clock:
    """Wall and process CPU seconds of one block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def alternate(
    sides: dict[str, Callable[[], Clock]], rounds: int, log: Callable[[str], None]
) -> dict[str, list[Clock]]:
    """Timings per side per round, one discarded warm-up round first, order alternating."""
    names = list(sides)
    times: dict[str, list[Clock]] = {n: [] for n in names}
    for r in range(rounds + 1):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            clock = sides[name]()
            if r > 0:
                times[name].append(clock)
            log(
                f"round {r}{' (warm-up)' if r == 0 else ''}: {name} "
                f"{clock.wall:.2f}s wall, {clock.cpu:.2f}s CPU"
            )
    return times


def median_ratio(num: list[Clock], den: list[Clock], attr: str) -> float:
    """Median over rounds of num/den, for wall or CPU seconds."""
    return statistics.median(
        getattr(a, attr) / getattr(b, attr) for a, b in zip(num, den, strict=True)
    )


# ----------------------------------------------------------------------------- ours
class Ours:
    """One fresh ``TrainingRun`` per call (same data, tokenizer, pristine backbone copy)."""

    def __init__(self, cfg: Config, data, backbone, tokenizer):
        self.cfg, self.data, self.backbone, self.tokenizer = cfg, data, backbone, tokenizer
        self.examples = 0
        self.threads = 0  # torch threads right after the last timed epoch
        self.inner_seconds: list[float] = []

    def __call__(self) -> Clock:
        run = TrainingRun(
            self.cfg, self.data, backbone=copy.deepcopy(self.backbone), tokenizer=self.tokenizer
        )
        with Clock() as clock:
            report = run.train_epoch()
        self.threads = torch.get_num_threads()
        self.examples = report.examples
        self.inner_seconds.append(report.epoch_seconds)
        return clock


# ----------------------------------------------------------------------------- Trainer
def trainer_missing() -> str | None:
    """Why the ``Trainer`` cannot run here (None if it can), asked before any timing so that a
    missing ``accelerate`` costs a one-line error, not minutes of the other comparisons."""
    from transformers.utils import import_utils

    need = getattr(import_utils, "ACCELERATE_MIN_VERSION", "0.26.0")
    if import_utils.is_accelerate_available(need):
        return None
    return (
        f"the Trainer comparison needs accelerate>={need} (pip install -e '.[bench]'); "
        "--only exits and --only ema run without it"
    )


TUNED = {  # what a user who tunes the Trainer for CPU throughput sets (module docstring)
    "train_sampling_strategy": "group_by_length",
    "optim": "adamw_torch_fused",
}


class HFTrainer:
    """One fresh ``Trainer`` per call on the same encoded examples; ``tuned``: with the
    ``TUNED`` arguments."""

    def __init__(
        self,
        cfg: Config,
        run_data: TrainingRun,
        model,
        tokenizer,
        out_dir: str,
        tuned: bool = False,
    ):
        enc = run_data.encoded["sst"]["train"]
        self.rows = [
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "token_type_ids": [0] * len(ids),
                "labels": int(label),
            }
            for ids, label in zip(enc.ids_a, enc.labels, strict=True)
        ]
        self.cfg, self.model, self.tokenizer, self.out_dir = cfg, model, tokenizer, out_dir
        self.tuned = tuned
        self.runtime: list[float] = []
        self.optimizer = ""  # the optimiser the Trainer built, as logged
        self.sampler = ""  # the training sampler it chose, as logged
        self.threads = 0  # torch threads right after the last timed training

    def __call__(self) -> Clock:
        from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

        cfg = self.cfg
        args = TrainingArguments(
            output_dir=self.out_dir,
            per_device_train_batch_size=int(cfg.batch_size),
            learning_rate=cfg.lr,
            num_train_epochs=int(cfg.epochs),
            weight_decay=cfg.weight_decay,
            warmup_steps=int(cfg.warmup_ratio * -(-len(self.rows) // int(cfg.batch_size))),
            max_grad_norm=cfg.grad_clip,
            seed=cfg.seed,
            use_cpu=True,
            report_to="none",
            eval_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
            **(TUNED if self.tuned else {}),
        )
        trainer = Trainer(
            model=copy.deepcopy(self.model),
            args=args,
            train_dataset=self.rows,
            data_collator=DataCollatorWithPadding(self.tokenizer),
        )
        with Clock() as clock:
            out = trainer.train()
        self.threads = torch.get_num_threads()
        self.sampler = type(trainer._get_train_sampler()).__name__
        self.runtime.append(float(out.metrics["train_runtime"]))
        group = trainer.optimizer.param_groups[0]
        self.optimizer = (
            f"{type(getattr(trainer.optimizer, 'optimizer', trainer.optimizer)).__name__} "
            f"(fused={group.get('fused')}, foreach={group.get('foreach')})"
        )
        return clock

    def padding(self, seed: int) -> float:
        """Padded tokens per real token over one epoch's batches of this side's sampler."""
        from transformers.trainer_pt_utils import get_length_grouped_indices

        lengths = [len(r["input_ids"]) for r in self.rows]
        batch = int(self.cfg.batch_size)
        generator = torch.Generator().manual_seed(seed)
        if self.tuned:
            order = get_length_grouped_indices(lengths, batch, generator=generator)
        else:
            order = torch.randperm(len(lengths), generator=generator).tolist()
        padded = sum(
            len(chunk) * max(lengths[i] for i in chunk)
            for chunk in (order[k : k + batch] for k in range(0, len(order), batch))
        )
        return padded / sum(lengths)


def padding_of(run: TrainingRun) -> float:
    """Padded tokens per real token over our first epoch's batches."""
    batches = run.epoch_batches(0)
    return sum(b.input_ids.numel() for b in batches) / sum(
        int(b.attention_mask.sum()) for b in batches
    )


def hf_model(cfg: Config):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the newly initialised classifier report is noise here
    return AutoModelForSequenceClassification.from_pretrained(
        packaged_model_path(), num_labels=5, hidden_dropout_prob=cfg.dropout
    )


# ----------------------------------------------------------------------------- parts
def vs_trainer(args, log) -> dict[str, float]:
    """CPU-time examples/s ratios of berter against the plain and the tuned ``Trainer``; with
    ``--profile``, that side's median CPU seconds per epoch alone."""
    cfg = Config(
        data_dir=args.data_dir,
        tasks=("sst",),
        max_train=args.sst_examples,
        max_dev=1,
        epochs=1,
        strategy="final",
        num_threads=args.threads,
        seed=args.seed,
    )
    data = load_data(cfg.data_dir, cfg.tasks, cfg.max_train, cfg.max_dev, cfg.seed)
    tokenizer = get_tokenizer(cfg.model)
    backbone = load_backbone(cfg.model, cfg.dropout)
    probe = TrainingRun(cfg, data, backbone=copy.deepcopy(backbone), tokenizer=tokenizer)
    ours = Ours(cfg, data, backbone, tokenizer)
    model = hf_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {
            "berter": ours,
            "Trainer": HFTrainer(cfg, probe, model, tokenizer, tmp),
            "Trainer tuned": HFTrainer(cfg, probe, model, tokenizer, tmp, tuned=True),
        }
        n = len(sides["Trainer"].rows)
        enc = probe.encoded["sst"]["train"]
        log(
            f"SST: {n} training examples, mean length {sum(enc.lengths()) / n:.1f} tokens, "
            f"{torch.get_num_threads()} torch thread(s); tuned Trainer: {TUNED}"
        )
        log(
            "padded tokens per real token: "
            f"berter {padding_of(probe):.2f}, Trainer {sides['Trainer'].padding(args.seed):.2f}, "
            f"Trainer tuned {sides['Trainer tuned'].padding(args.seed):.2f}"
        )
        if args.profile:
            times = alternate({args.profile: sides[args.profile]}, args.rounds, log)
            return {args.profile: statistics.median(t.cpu for t in times[args.profile])}
        times = alternate(sides, args.rounds, log)
    assert ours.examples == n, (ours.examples, n)
    for name, side in sides.items():
        if name != "berter":
            log(f"{name}: sampler {side.sampler}, optimiser {side.optimizer}")
    log("torch threads while training: " + ", ".join(f"{n} {s.threads}" for n, s in sides.items()))
    for name, ts in times.items():
        log(f"{name}: {', '.join(f'{n / t.wall:.1f}' for t in ts)} examples/s (wall)")
    ratios = {}
    for name in ("Trainer", "Trainer tuned"):
        wall = median_ratio(times[name], times["berter"], "wall")
        log(f"examples/s ratio berter/{name} (wall): {wall:.2f}")
        ratios[name] = median_ratio(times[name], times["berter"], "cpu")
    log(
        "inner clocks (berter epoch_seconds, Trainer train_runtime, tuned): "
        f"{statistics.median(ours.inner_seconds[1:]):.2f}s, "
        f"{statistics.median(sides['Trainer'].runtime[1:]):.2f}s, "
        f"{statistics.median(sides['Trainer tuned'].runtime[1:]):.2f}s"
    )
    return ratios


def overhead(args, log, name: str, changes: dict) -> float:
    """CPU-time ratio of ``strategy=final`` with ``changes`` against plain ``strategy=final``."""
    base = Config(
        data_dir=args.data_dir,
        max_train=args.task_examples,
        max_dev=1,
        epochs=1,
        num_threads=args.threads,
        seed=args.seed,
    )
    data = load_data(base.data_dir, base.tasks, base.max_train, base.max_dev, base.seed)
    tokenizer = get_tokenizer(base.model)
    backbone = load_backbone(base.model, base.dropout)
    sides = {
        "final": Ours(base, data, backbone, tokenizer),
        name: Ours(base.replace(**changes), data, backbone, tokenizer),
    }
    times = alternate(sides, args.rounds, log)
    log(f"time ratio {name}/final (wall): {median_ratio(times[name], times['final'], 'wall'):.3f}")
    return median_ratio(times[name], times["final"], "cpu")


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DATA))
    p.add_argument("--quick", action="store_true", help="small data, same comparisons")
    p.add_argument("--sst-examples", type=positive_int, help="SST training examples (before calib)")
    p.add_argument("--task-examples", type=positive_int, help="examples per task for parts 2 and 3")
    p.add_argument(
        "--rounds", type=positive_int, help="timed rounds per comparison (after a warm-up)"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch threads (default 1: see the docstring)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=("trainer", "exits", "ema"), help="run one comparison")
    p.add_argument("--profile", choices=SIDES, help="run this side of part 1 alone, for a profiler")
    args = p.parse_args(argv)
    if args.profile:
        args.only = "trainer"
    args.sst_examples = args.sst_examples or (300 if args.quick else 2000)
    args.task_examples = args.task_examples or (70 if args.quick else 600)
    args.rounds = args.rounds or (2 if args.quick else 3)
    if args.only in (None, "trainer") and (why := trainer_missing()):
        print(f"error: {why}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    torch.set_num_threads(args.threads)
    log(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    lines = []  # printed last, to stdout (the Trainer prints its own metrics there too)
    if args.only in (None, "exits"):
        ratio = overhead(args, log, "joint", {"strategy": "joint"})
        lines.append(f"time ratio joint/final (3 tasks, CPU time): {ratio:.3f}")
    if args.only in (None, "ema"):
        ratio = overhead(args, log, "ema", {"ema_decay": 0.999})
        lines.append(f"time ratio ema/final (3 tasks, CPU time): {ratio:.3f}")
    if args.profile:
        seconds = vs_trainer(args, log)[args.profile]
        lines.append(f"{args.profile} alone: median {seconds:.2f} CPU s per epoch")
    elif args.only in (None, "trainer"):
        ratios = vs_trainer(args, log)
        lines.append(f"examples/s ratio berter/Trainer (CPU time): {ratios['Trainer']:.2f}")
        lines.append(  # the headline: the fair anchor
            f"examples/s ratio berter/tuned Trainer (CPU time): {ratios['Trainer tuned']:.2f}"
        )
    log(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
