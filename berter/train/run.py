"""The training loop: one configuration, trained and evaluated at every exit.

Plain PyTorch (no transformers ``Trainer``): the strategy says which exits' losses count
and which weights move at each step; the exit method turns those exits' outputs into a
loss; SMART adds its adversarial term. After every epoch all exits are scored on dev from
one pass (berter.train.evaluate). Optional behaviour (weight averaging, the epoch log, a
user's own logging or early stopping) runs as callbacks (berter.train.callbacks).
``TrainingRun`` is what the Ray trainable drives epoch by epoch; ``train_and_evaluate`` is
the one-call entry point.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

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
from berter.exits.cost import CostModel
from berter.exits.engine import measure_costs
from berter.exits.rules import build_exit_method
from berter.model.losses import distill_loss
from berter.model.multi_exit import MultiExitBert
from berter.strategies import StepPlan, build_strategy
from berter.tasks import Batch, Task
from berter.train.averaging import WeightAveraging
from berter.train.callbacks import EpochReport, TrainerCallback
from berter.train.evaluate import Evaluation, evaluate, metric_row
from berter.train.runtime import keep_freed_memory, pick_device, seed_everything
from berter.variants import check


def linear_warmup_decay(step: int, *, segments: tuple[int, ...], warmup_ratio: float) -> float:
    """Learning-rate multiplier at ``step`` of a phase cut into runs of ``segments`` steps,
    each with a linear warmup over ``warmup_ratio`` of the run and a linear decay to 0 at its
    end: transformers' ``get_linear_schedule_with_warmup`` within every run (one run: exactly
    that schedule). An empty run is skipped; past the last run: 0."""
    for length in segments:
        if step < length:
            break
        step -= length
    else:
        return 0.0
    warmup = int(warmup_ratio * length)
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (length - step) / max(1, length - warmup))


def config_callbacks(cfg: Config, model: nn.Module) -> list[TrainerCallback]:
    """The callbacks a config asks for itself (weight averaging at ``ema_decay`` > 0)."""
    return [WeightAveraging(model, cfg.ema_decay)] if cfg.ema_decay > 0 else []


def encode_splits(
    cfg: Config, data: MultitaskData, tasks: list[Task], tokenizer: Any
) -> dict[str, dict[str, EncodedSplit]]:
    """Every task's train, dev and calib splits tokenised once (pair tasks in the configured
    layout), plus the swapped-order training pairs when ``pair_swap`` draws an order per
    example each epoch."""
    encoded: dict[str, dict[str, EncodedSplit]] = {}
    for task in tasks:
        layout = cfg.pair_layout if task.is_pair else "packed"
        splits = data.splits[task.name]
        encoded[task.name] = {
            split: encode(getattr(splits, split), task, tokenizer, cfg.max_len, layout)
            for split in ("train", "dev", "calib")
        }
        if cfg.pair_swap and task.is_pair:
            encoded[task.name]["train_swapped"] = encode(
                swapped(splits.train), task, tokenizer, cfg.max_len, layout
            )
    return encoded


class TrainingRun:
    """Builds data, model, strategy, exit method and optimiser for one configuration, and
    trains it epoch by epoch, calling its callbacks' hooks along the way."""

    def __init__(
        self,
        cfg: Config,
        data: MultitaskData | None = None,
        *,
        backbone: PreTrainedModel | None = None,
        tokenizer: Any = None,
        device: torch.device | str | None = None,
        callbacks: Iterable[TrainerCallback] = (),
        trial_id: str | None = None,
        exit_costs: CostModel | dict[str, CostModel] | None = None,
    ):
        cfg.validate()
        check(cfg)
        self.cfg = cfg
        self.trial_id = trial_id  # the sweep trial this run is (None outside a sweep)
        self.device = torch.device(device) if device is not None else pick_device(cfg.device)
        keep_freed_memory()
        if self.device.type == "cpu" and cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.data = data or load_data_for(cfg)
        self.tasks = [self.data.splits[name].task for name in cfg.tasks]
        self.loss_weights = cfg.loss_weights()
        self.tokenizer = tokenizer or get_tokenizer(cfg.model)
        self.encoded = encode_splits(cfg, self.data, self.tasks, self.tokenizer)
        self.method = build_exit_method(cfg)
        self.model = MultiExitBert.from_config(
            cfg, self.tasks, backbone, exit_module=self.method.build_module
        ).to(self.device)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.strategy = build_strategy(cfg, self.model)
        # the tasks SMART regularises; none at smart_lambda=0, which then trains as smart=off
        # (computing a zero-weighted term would still draw noise and dropout masks)
        smart = {t.name for t in self.tasks if cfg.smart in ("all", t.name)}
        self.smart_tasks = smart if cfg.smart_lambda else set()
        self.callbacks = [*config_callbacks(cfg, self.model), *callbacks]
        self.began = False  # on_train_begin called in this process
        self.should_stop = False  # set by a callback: no epoch after the current one
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

    def notify(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

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
        """Fresh optimiser and linear warmup-decay schedule (at every new phase), for the phase
        of the current epoch: one warmup and decay over its ``total_steps``, or one per run of
        steps the strategy names (SLF: per layer's slice). The parameter groups are the
        model's (``MultiExitBert.parameter_groups``)."""
        cfg = self.cfg
        groups = self.model.parameter_groups(
            cfg.lr, cfg.weight_decay, cfg.layer_lr_decay, self.method.module_lr()
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
        phase = self.strategy.epoch_phase(self.epoch)
        segments = tuple(self.strategy.lr_segments(phase, max(total_steps, 1)))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            functools.partial(
                linear_warmup_decay, segments=segments, warmup_ratio=cfg.warmup_ratio
            ),
        )

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

        Only the base exit loss is known to read nothing but the trained exits (LTE and Q-exit
        train their module on every exit, see ``cfg.exit_module_trained_only``; Q-exit also
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
            if task.name in self.smart_tasks:
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
        if not self.began:
            self.began = True
            self.notify("on_train_begin")
        epoch = self.epoch
        phase = self.strategy.epoch_phase(epoch)
        if phase != self.phase or self.optimizer is None:
            self.build_optimizer(self.steps_in_phase(epoch))
            self.phase = phase
        batches = self.epoch_batches(epoch)
        self.notify("on_epoch_begin", epoch)
        seed_everything(self.cfg.seed * 1000 + epoch)  # dropout masks: same per epoch, resumable
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
            loss = loss.detach().float()
            self.notify("on_step_end", step, loss)
            total += loss
            examples += len(batch)
        sync()
        seconds = time.perf_counter() - start
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.epoch += 1
        self.train_seconds += seconds
        mean_loss = float(total) / max(len(batches), 1)
        report = EpochReport(self.epoch, phase, mean_loss, seconds, self.train_seconds, examples)
        self.notify("on_epoch_end", report)
        return report

    def evaluate(self, split: str = "dev") -> Evaluation:
        """Score every exit on a split from one pass over it (berter.train.evaluate)."""
        return evaluate(self, split)

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


    # ------------------------------------------------------------------ loop
    def next_epoch(self) -> EpochReport:
        """Train one epoch and evaluate it on dev (the unit a Tune trial steps by)."""
        report = self.train_epoch()
        dev = self.evaluate("dev")
        report.metrics = metric_row(self, dev)
        report.metrics["diverged"] = not math.isfinite(report.train_loss)
        self.strategy.end_epoch(self.epoch - 1, dev.dev_score)
        self.history.append(report)
        self.notify("on_evaluate", report, dev)
        if self.finished or report.metrics["diverged"]:
            self.notify("on_train_end")
        return report

    @property
    def finished(self) -> bool:
        """Every planned epoch trained, or a callback stopped the run."""
        return self.epoch >= self.strategy.num_epochs or self.should_stop

    def fit(self) -> EpochReport:
        """Train the remaining epochs, evaluating after each; returns the last report."""
        report = None
        while not self.finished:
            report = self.next_epoch()
            if report.metrics["diverged"]:
                break
        return report if report is not None else self.history[-1]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, plus each stateful callback's entry."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "strategy": self.strategy.state_dict(),
            "epoch": self.epoch,
            "phase": self.phase,
            "train_seconds": self.train_seconds,
            "stopped": self.should_stop,
        }
        for callback in self.callbacks:
            if callback.state_key is not None:
                state[callback.state_key] = callback.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for callback in self.callbacks:  # after the model's weights (the average pairs with them)
            if state.get(callback.state_key) is not None:
                callback.load_state_dict(state[callback.state_key])
        self.epoch = int(state["epoch"])
        self.train_seconds = float(state["train_seconds"])
        self.should_stop = bool(state.get("stopped", False))
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
    callbacks: Iterable[TrainerCallback] = (),
) -> dict[str, Any]:
    """Train one configuration end to end; return the final epoch's metrics."""
    run = TrainingRun(cfg, data, backbone=backbone, callbacks=callbacks)
    report = run.fit()
    return {
        **report.metrics,
        "train_loss": report.train_loss,
        "train_seconds": run.train_seconds,
        "epochs_done": run.epoch,
        "variant": cfg.variant,
        "data_source": run.data.source,
    }
