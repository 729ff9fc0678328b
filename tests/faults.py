"""Fault injection for the reliability tests: a TrainerCallback driven by ``BERTER_TEST_FAULT``.

Test-only, and outside the package: a sweep loads it like any user callback,
``--callback faults:FaultInjector``, with this directory on ``PYTHONPATH`` (the driver's,
which a local Ray instance's workers inherit; a cluster's nodes need it in their own).

``BERTER_TEST_FAULT`` is a comma-separated list whose k-th entry applies to the k-th run to
begin training (later runs train normally). An entry is ``none``, ``raise@E`` (an exception
at the start of epoch E), ``nan@E`` (every weight turns NaN at the start of epoch E, so its
training loss is NaN: the trial diverges), ``stall@E`` (the run sleeps after epoch E, by
when the sweep has checkpointed it, before epoch E+1: a window to kill the driver or a
worker; a run restored from that checkpoint does not sleep again) or ``hold@E`` (the same
pause, which ends when the test creates ``release`` in the claims directory: a window to
stop the results' endpoint and let the run go on), optionally followed by
``:once`` (only on the trial's first start: a transient fault that a retry from the
checkpoint gets past). Runs claim entries by creating files in ``BERTER_TEST_FAULT_DIR``
(a directory every trial can reach), keyed by the sweep's trial id, so a restarted trial
finds its own entry again. A run that stalls or holds first creates ``held-<trial id>`` in
that directory, so the test knows the moment.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import torch

from berter.errors import ConfigError
from berter.train.callbacks import EpochReport, Run, TrainerCallback

FAULT_ENV = "BERTER_TEST_FAULT"
FAULT_DIR_ENV = "BERTER_TEST_FAULT_DIR"
FAULT_RE = re.compile(r"none|(raise|nan|stall|hold)@[1-9][0-9]*(:once)?")
RELEASE = "release"  # hold@E: the file in the claims directory that ends the pause
STALL_SECONDS = 600.0  # long enough to be killed; ends on its own if nobody does


def faults_from_env() -> tuple[str, ...]:
    """The validated entries of ``BERTER_TEST_FAULT`` (empty when it is not set)."""
    text = os.environ.get(FAULT_ENV, "").strip()
    entries = tuple(e.strip() for e in text.split(",")) if text else ()
    bad = [e for e in entries if not FAULT_RE.fullmatch(e)]
    if bad:
        raise ConfigError(
            f"{FAULT_ENV}: bad entry {bad[0]!r}; use none, raise@E, nan@E, stall@E or hold@E, "
            "optionally with :once"
        )
    return entries


def claim_fault(faults: tuple[str, ...], directory: str | Path, trial_id: str) -> str | None:
    """This trial's fault (``raise@E``, ``nan@E``, ``stall@E``, ``hold@E``) or None.

    The k-th trial to start claims entry k by creating ``trial-<k>`` exclusively (atomic across
    processes and nodes sharing the directory); a restarted trial finds its own claim again.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for k, entry in enumerate(faults):
        fault, _, once = entry.partition(":")
        slot = root / f"trial-{k}"
        try:
            with open(slot, "x") as f:
                f.write(trial_id)
        except FileExistsError:
            if slot.read_text() != trial_id:
                continue
            return None if once or fault == "none" else fault  # a restart: ":once" is spent
        return None if fault == "none" else fault
    return None


class FaultInjector(TrainerCallback):
    """Raises, turns the weights NaN, stalls or holds in the epoch its claimed entry names.

    ``fault``: inject this one (``"nan@1"``) in this run, without the environment or a claim.
    """

    def __init__(self, fault: str | None = None):
        self.given = fault
        self.faults = faults_from_env() if fault is None else ()
        self.directory = os.environ.get(FAULT_DIR_ENV)
        if self.faults and not self.directory:
            raise ConfigError(f"{FAULT_ENV} needs {FAULT_DIR_ENV}, a directory every trial reaches")
        self.fault: str | None = None
        self.ended: int | None = None  # the last epoch this process trained (1-based)

    def on_train_begin(self, run: Run) -> None:
        if self.given is not None:
            self.fault = self.given
        elif self.faults:
            self.fault = claim_fault(self.faults, self.directory, run.trial_id or uuid.uuid4().hex)

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        kind, _, at = (self.fault or "none@0").partition("@")
        at = int(at)
        if kind == "raise" and epoch + 1 == at:
            raise RuntimeError(f"injected fault in epoch {at} (FaultInjector)")
        if kind == "nan" and epoch + 1 == at:
            with torch.no_grad():
                for p in run.model.parameters():
                    p.fill_(float("nan"))
        if kind in ("stall", "hold") and self.ended == at:  # epoch `at` is checkpointed
            self.pause(run, release=kind == "hold")

    def pause(self, run: Run, release: bool) -> None:
        """Mark the moment, then sleep (``hold``: until the test releases the run)."""
        directory = Path(self.directory or ".")
        (directory / f"held-{run.trial_id}").touch()
        deadline = time.monotonic() + STALL_SECONDS
        while time.monotonic() < deadline:
            if release and (directory / RELEASE).exists():
                return
            time.sleep(0.1)

    def on_epoch_end(self, run: Run, report: EpochReport) -> None:
        self.ended = report.epoch
