"""The training loop: one configuration, trained and evaluated at every exit.

Plain PyTorch (no transformers ``Trainer``): the strategy says which exits' losses count
and which weights move at each step; the exit method turns those exits' outputs into a
loss; SMART adds its adversarial term. After every epoch all exits are scored on dev
from one pass. ``TrainingRun`` is what the Ray trainable drives epoch by epoch;
``train_and_evaluate`` is the one-call entry point.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import platform
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import BertModel, get_linear_schedule_with_warmup

from berter.config import Config
from berter.data.encode import (
    EncodedSplit,
    encode,
    get_tokenizer,
    make_batches,
    mix_orders,
    multitask_schedule,
    swapped,
)
from berter.data.files import MultitaskData, load_data_for
from berter.exits.base import ExitMethod
from berter.exits.calibration import operating_point
from berter.exits.cost import CostModel
from berter.exits.engine import measure_costs
from berter.exits.rules import build_exit_method
from berter.metrics import dev_score, predict, task_metric
from berter.model.losses import distill_loss
from berter.model.multi_exit import MultiExitBert
from berter.strategies import StepPlan, build_strategy
from berter.tasks import Batch, Task, metric_column
from berter.train.averaging import WeightAverage
from berter.variants import check

EVAL_BATCH = 64


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP_FREED_BYTES = 1 << 30


@functools.cache  # once per process: libc_ver() reads the interpreter's binary
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    A training step frees and reallocates the same large tensors every step (the word-embedding
    gradient alone is vocabulary x hidden floats, 47 MB for the packaged backbone). glibc serves
    blocks over its mmap threshold with fresh mappings and trims the heap's free top, so each
    step faults those pages in again, zero-filled by the kernel: about 5% of the training time on
    2 cores (benchmarks/freed_memory.py). Serving everything from the heap and trimming only
    above 1 GB keeps the pages mapped, at the cost of holding the peak. Process-wide and
    idempotent; False where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
    )


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass
class TaskEval:
    """Every exit's output on one split of one task, in the split's example order."""

    task: Task
    labels: np.ndarray  # [N]
    logits: list[torch.Tensor]  # per exit, [N] or [N, C], float32 on CPU
    pooled: list[torch.Tensor]  # per exit, [N, H]
    preds: list[np.ndarray]  # per exit
    metrics: list[float]  # per exit
    siamese: bool = False

    @property
    def final(self) -> float:
        return self.metrics[-1]


@dataclass
class Evaluation:
    tasks: dict[str, TaskEval]
    num_layers: int

    def score_at(self, layer: int) -> float:
        """Dev score if every example exited at ``layer`` (0-based)."""
        return dev_score({n: t.metrics[layer] for n, t in self.tasks.items()}, self.task_defs)

    @property
    def task_defs(self) -> dict[str, Task]:
        return {n: t.task for n, t in self.tasks.items()}

    @property
    def dev_score(self) -> float:
        return self.score_at(self.num_layers - 1)

    @property
    def layer_scores(self) -> list[float]:
        return [self.score_at(i) for i in range(self.num_layers)]


@dataclass
class EpochReport:
    epoch: int  # 1-based
    phase: str
    train_loss: float
    epoch_seconds: float
    train_seconds: float  # cumulative
    examples: int
    metrics: dict[str, Any] = field(default_factory=dict)


class TrainingRun:
    """Builds data, model, strategy, exit method and optimiser for one configuration."""

    def __init__(
        self,
        cfg: Config,
        data: MultitaskData | None = None,
        *,
        backbone: BertModel | None = None,
        tokenizer: Any = None,
        device: torch.device | str | None = None,
        log: Callable[[str], None] | None = None,
        exit_costs: CostModel | dict[str, CostModel] | None = None,
    ):
        cfg.validate()
        check(cfg)
        self.cfg = cfg
        self.log = log or (lambda msg: None)
        self.device = torch.device(device) if device is not None else pick_device(cfg.device)
        keep_freed_memory()
        if self.device.type == "cpu" and cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.data = data or load_data_for(cfg)
        self.tasks = [self.data.splits[name].task for name in cfg.tasks]
        self.loss_weights = cfg.loss_weights()
        self.tokenizer = tokenizer or get_tokenizer(cfg.model)
        self.encoded: dict[str, dict[str, EncodedSplit]] = {}
        for task in self.tasks:
            layout = cfg.pair_layout if task.is_pair else "packed"
            splits = self.data.splits[task.name]
            self.encoded[task.name] = {
                split: encode(getattr(splits, split), task, self.tokenizer, cfg.max_len, layout)
                for split in ("train", "dev", "calib")
            }
            if cfg.pair_swap and task.is_pair:  # the other order, drawn per example each epoch
                self.encoded[task.name]["train_swapped"] = encode(
                    swapped(splits.train), task, self.tokenizer, cfg.max_len, layout
                )
        self.method = build_exit_method(cfg)
        self.model = MultiExitBert.from_config(
            cfg, self.tasks, backbone, exit_module=self.method.build_module
        ).to(self.device)
        if cfg.compile:
            self.forward = torch.compile(self.model)
        else:
            self.forward = self.model
        self.strategy = build_strategy(cfg, self.model)
        self.average = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.epoch = 0  # epochs completed
        self.train_seconds = 0.0
        self.phase: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.history: list[EpochReport] = []
        self.amp = self.device.type == "cuda" and cfg.amp
        bf16 = self.amp and torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and not bf16)
        # the early-exit engine's cost model the operating point is chosen with: given (one
        # for every task, or per task), or timed on this machine once per exit method
        self.given_costs = exit_costs
        self.timed_costs: dict[str, dict[str, CostModel]] = {}

    # ------------------------------------------------------------------ data
    def epoch_batches(self, epoch: int) -> list[Batch]:
        """The interleaved multitask batches of one epoch, deterministic under the seed."""
        seed = self.cfg.seed * 1000 + epoch
        per_task = {}
        for name, enc in self.encoded.items():
            train = enc["train"]
            if "train_swapped" in enc:
                train = mix_orders(train, enc["train_swapped"], random.Random(seed))
            per_task[name] = make_batches(train, int(self.cfg.batch_size), shuffle=True, seed=seed)
        batches = multitask_schedule(per_task, self.cfg.task_order, seed)
        frac = self.strategy.epoch_fraction(epoch)
        if frac < 1.0:
            batches = batches[: max(1, round(len(batches) * frac))]
        return batches

    def steps_in_phase(self, epoch: int) -> int:
        phase = self.strategy.epoch_phase(epoch)
        total = 0
        for e in range(epoch, self.strategy.num_epochs):
            if self.strategy.epoch_phase(e) != phase:
                break
            total += len(self.epoch_batches(e))
        return total

    # ------------------------------------------------------------------ optimiser
    def build_optimizer(self, total_steps: int) -> None:
        """Fresh optimiser and linear warmup-decay schedule (at every new phase)."""
        cfg = self.cfg
        module = self.model.exit_module
        extra_ids = {id(p) for p in module.parameters()} if module is not None else set()
        scales = self.lr_scales()
        # (no decay, lr scale) -> params; decayed and undecayed weights stay in separate groups
        # even when weight_decay is 0, so a checkpoint's optimiser state always fits
        by_setting: dict[tuple[bool, float], list[nn.Parameter]] = {}
        extra = []
        for name, p in self.model.named_parameters():
            if id(p) in extra_ids:
                extra.append(p)
                continue
            no_decay = p.ndim < 2 or "LayerNorm" in name or name.endswith("bias")
            by_setting.setdefault((no_decay, scales.get(id(p), 1.0)), []).append(p)
        groups: list[dict[str, Any]] = [
            {"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay,
             "lr": cfg.lr * scale}
            for (no_decay, scale), params in by_setting.items()
        ]  # fmt: skip
        if extra:
            groups.append(
                {"params": extra, "weight_decay": 0.0, "lr": self.method.module_lr() or cfg.lr}
            )
        if cfg.optimizer == "adamw":
            # fused: one pass over each tensor. On CPU foreach took a quarter of a training
            # step (the 12M-weight word embedding is updated in full every step); fused is ~4x faster
            try:
                self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
            except RuntimeError:  # torch < 2.4 has no fused kernel for this device
                self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
        elif cfg.optimizer == "rmsprop":
            self.optimizer = torch.optim.RMSprop(groups, lr=cfg.lr, foreach=True)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, foreach=True)
        warmup = int(cfg.warmup_ratio * total_steps)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, warmup, max(total_steps, 1)
        )

    def lr_scales(self) -> dict[int, float]:
        """Layer-wise learning-rate decay, by parameter id (absent: the full rate).

        Encoder layer l of L (1 = lowest) trains at ``layer_lr_decay ** (L - l)`` of ``lr``,
        the embeddings at ``** L``; exit heads keep ``lr``. Lower layers hold the more
        general features, so they move less (Zhang et al., *Revisiting Few-sample BERT
        Fine-tuning*).
        """
        decay = self.cfg.layer_lr_decay
        if decay == 1.0:
            return {}
        n = self.model.num_layers
        scales = {id(p): decay**n for p in self.model.embedding_parameters()}
        for i in range(n):
            scales.update({id(p): decay ** (n - 1 - i) for p in self.model.layer_parameters(i)})
        return scales

    def apply_trainable(self, plan: StepPlan) -> None:
        """Freeze everything outside the plan, so frozen weights get no gradient at all."""
        names = plan.trainable
        for name, p in self.model.named_parameters():
            p.requires_grad_(names is None or name in names)

    # ------------------------------------------------------------------ training
    def autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return nullcontext()

    def loss_exits(self, plan: StepPlan) -> tuple[int, ...] | None:
        """The exits a step's loss reads (None: all), so the forward pass skips the rest.

        Only the base exit loss is known to read nothing but the trained exits (Q-exit also
        reads each one's predecessor); SMART reads the same exits as the loss.
        """
        if plan.exits and type(self.method).training_loss is ExitMethod.training_loss:
            return plan.exits
        return None

    def students(self, plan: StepPlan) -> tuple[int, ...]:
        """The intermediate exits this step distils from the last one (``exit_distill``)."""
        if self.cfg.exit_distill <= 0 or not plan.teacher:
            return ()
        return tuple(i for i in plan.exits if i != self.model.num_layers - 1)

    def step_loss(self, batch: Batch, plan: StepPlan) -> torch.Tensor:
        task = self.model.tasks[batch.task]
        students = self.students(plan)
        last = self.model.num_layers - 1
        exits = self.loss_exits(plan)
        if students and exits is not None:
            exits = (*exits, last)  # the teacher
        with self.autocast():
            outs = self.forward(batch, exits=exits)
            loss = self.method.training_loss(
                task, outs, batch.labels, plan.exits, self.model.exit_module
            )
            if self.cfg.smart == "all" or (self.cfg.smart == "para" and task.name == "para"):
                from berter.train.smart import smart_loss

                loss = loss + self.cfg.smart_lambda * smart_loss(
                    self.model, batch, outs, plan.exits, self.cfg
                )
            for i in students:
                loss = loss + self.cfg.exit_distill * distill_loss(
                    task, outs[i], outs[last], self.cfg.distill_temperature
                )
        return loss * self.loss_weights[task.name]  # x * 1.0 == x: unweighted runs are unchanged

    def train_epoch(self) -> EpochReport:
        """One training pass; reports the mean loss (one host sync, at the end)."""
        epoch = self.epoch
        phase = self.strategy.epoch_phase(epoch)
        if phase != self.phase or self.optimizer is None:
            self.build_optimizer(self.steps_in_phase(epoch))
            self.phase = phase
        if self.cfg.test_fault == f"raise@{epoch + 1}":
            raise RuntimeError(f"injected fault in epoch {epoch + 1} (test_fault)")
        batches = self.epoch_batches(epoch)
        seed_everything(self.cfg.seed * 1000 + epoch)  # dropout masks: same per epoch, resumable
        if self.average is not None:
            self.average.use_raw()
        self.model.train()
        pin = self.device.type == "cuda"
        total = torch.zeros((), device=self.device)
        examples, last_trainable = 0, object()
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for step, batch in enumerate(batches):
            plan = self.strategy.step(epoch, step, len(batches))
            if plan.trainable is not last_trainable:
                self.apply_trainable(plan)
                last_trainable = plan.trainable
            if pin:
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=pin)
            loss = self.step_loss(batch, plan)
            if self.cfg.test_fault == f"nan@{epoch + 1}":
                loss = loss * float("nan")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.grad is not None], self.cfg.grad_clip
                )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.average is not None:
                self.average.update()
            total += loss.detach().float()
            examples += len(batch)
        sync()
        seconds = time.perf_counter() - start
        for p in self.model.parameters():
            p.requires_grad_(True)
        if self.average is not None:  # evaluated, checkpointed and exported from here on
            self.average.use_average()
        self.epoch += 1
        self.train_seconds += seconds
        mean_loss = float(total) / max(len(batches), 1)
        return EpochReport(self.epoch, phase, mean_loss, seconds, self.train_seconds, examples)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "dev") -> Evaluation:
        """Score every exit on a split from one pass over it."""
        self.model.eval()
        if self.model.siamese and "para" in self.model.tasks and split != "calib":
            self.calibrate_cos_threshold()
        out = {}
        for task in self.tasks:
            out[task.name] = self.eval_task(task, self.encoded[task.name][split])
        return Evaluation(out, self.model.num_layers)

    @torch.no_grad()
    def eval_task(self, task: Task, enc: EncodedSplit) -> TaskEval:
        n_layers = self.model.num_layers
        n = len(enc.labels)
        logits: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        pooled: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        order = []
        siamese = self.model.siamese and task.is_pair
        for batch in make_batches(enc, EVAL_BATCH, shuffle=False, seed=0):
            order.append(batch.index)
            batch = batch.to(self.device)
            with self.autocast():
                outs = self.model(batch)
            for i, o in enumerate(outs):  # kept on the device: one copy to the host at the end
                logits[i].append(o.logits.float())
                pooled[i].append(o.pooled.float())
        if n == 0:
            return TaskEval(task, np.zeros(0), [], [], [], [float("nan")] * n_layers, siamese)
        inv = torch.empty(n, dtype=torch.long)
        inv[torch.cat(order)] = torch.arange(n)
        labels = np.asarray(enc.labels, dtype=np.float64)
        lg = [torch.cat(x).cpu()[inv] for x in logits]
        pl = [torch.cat(x).cpu()[inv] for x in pooled]
        thresholds = self.model.cos_threshold.cpu()
        preds = [
            predict(task, lg[i], siamese, float(thresholds[i])).numpy() for i in range(n_layers)
        ]
        metrics = [task_metric(task, p, labels) for p in preds]
        return TaskEval(task, labels, lg, pl, preds, metrics, siamese)

    @torch.no_grad()
    def calibrate_cos_threshold(self) -> None:
        """Siamese paraphrase: per exit, the cosine threshold that is most accurate on training data."""
        enc = self.encoded["para"]["calib"]
        if not enc.labels:
            enc = self.encoded["para"]["train"]
        ev = self.eval_task(self.model.tasks["para"], enc)
        gold = ev.labels
        for i, cos in enumerate(ev.logits):
            cands = torch.linspace(-1, 1, 201)
            acc = ((cos[None, :] > cands[:, None]).numpy() == gold[None, :]).mean(1)
            self.model.cos_threshold[i] = float(cands[int(acc.argmax())])

    def exit_costs(self) -> dict[str, CostModel]:
        """Per task, the engine's costs on this machine (berter.exits.cost), timed on its
        calibration examples the first time they are asked for with this exit method."""
        if isinstance(self.given_costs, CostModel):
            return {t.name: self.given_costs for t in self.tasks}
        if self.given_costs is not None:
            return dict(self.given_costs)
        name = self.method.name
        if name not in self.timed_costs:
            self.timed_costs[name] = {
                t.name: measure_costs(self.model, self.method, self.encoded[t.name]["calib"])
                for t in self.tasks
                if len(self.encoded[t.name]["calib"]) and self.method.grid(t, self.model.num_layers)
            }
        return self.timed_costs[name]

    def exit_metrics(self, dev: Evaluation) -> dict[str, Any]:
        """Early-exit operating point and trade-off tables (berter.exits.calibration)."""
        return operating_point(self, dev)

    def metrics(self, dev: Evaluation) -> dict[str, Any]:
        """The flat metric dict reported per epoch (and written to the results)."""
        row: dict[str, Any] = {"dev_score": dev.dev_score}
        for t in dev.tasks.values():
            row[metric_column(t.task)] = t.final
            row[f"{metric_column(t.task)}_layers"] = [float(m) for m in t.metrics]
        scores = dev.layer_scores
        row["dev_score_mean_exits"] = float(np.mean(scores))
        row["best_layer"] = int(np.argmax(scores)) + 1
        row["layer_scores"] = scores
        row.update(self.exit_metrics(dev))
        return row

    # ------------------------------------------------------------------ loop
    def next_epoch(self) -> EpochReport:
        """Train one epoch and evaluate it on dev (the unit a Tune trial steps by)."""
        report = self.train_epoch()
        dev = self.evaluate("dev")
        report.metrics = self.metrics(dev)
        report.metrics["diverged"] = not math.isfinite(report.train_loss)
        self.strategy.end_epoch(self.epoch - 1, dev.dev_score)
        self.history.append(report)
        self.log(
            f"epoch {report.epoch}/{self.strategy.num_epochs} [{report.phase}] "
            f"loss {report.train_loss:.4f} dev {report.metrics['dev_score']:.4f} "
            f"({report.epoch_seconds:.1f}s)"
        )
        return report

    @property
    def finished(self) -> bool:
        return self.epoch >= self.strategy.num_epochs

    def fit(self, on_epoch: Callable[[EpochReport], None] | None = None) -> EpochReport:
        """Train the remaining epochs, evaluating after each; returns the last report."""
        report = None
        while not self.finished:
            report = self.next_epoch()
            if on_epoch is not None:
                on_epoch(report)
            if report.metrics["diverged"]:
                break
        return report if report is not None else self.history[-1]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "average": self.average.state_dict() if self.average is not None else None,
            "strategy": self.strategy.state_dict(),
            "epoch": self.epoch,
            "phase": self.phase,
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        # a last epoch's checkpoint has no average: the fresh one (nothing averaged yet) starts
        # from the loaded weights at its first update
        if self.average is not None and state.get("average") is not None:
            self.average.load_state_dict(state["average"])
        self.epoch = int(state["epoch"])
        self.train_seconds = float(state["train_seconds"])
        self.strategy.load_state_dict(state["strategy"])
        if state.get("optimizer") is not None:
            phase = self.strategy.epoch_phase(self.epoch)
            if phase == state["phase"]:  # resuming inside the same phase: same optimiser
                self.build_optimizer(self.steps_in_phase(self.epoch) + self._steps_done(phase))
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.phase = phase
        self.scaler.load_state_dict(state["scaler"])

    def _steps_done(self, phase: str) -> int:
        return sum(
            len(self.epoch_batches(e))
            for e in range(self.epoch)
            if self.strategy.epoch_phase(e) == phase
        )


def train_and_evaluate(
    cfg: Config,
    data: MultitaskData | None = None,
    *,
    backbone: nn.Module | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train one configuration end to end; return the final epoch's metrics."""
    run = TrainingRun(cfg, data, backbone=backbone, log=log)
    report = run.fit()
    return {
        **report.metrics,
        "train_loss": report.train_loss,
        "train_seconds": run.train_seconds,
        "epochs_done": run.epoch,
        "variant": cfg.variant,
        "data_source": run.data.source,
    }
