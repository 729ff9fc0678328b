"""A Tune callback that interrupts a sweep, for the resume tests of several files."""

import os
import signal
from pathlib import Path

from ray import tune


class InterruptSweep(tune.Callback):
    """Ctrl+C once the second trial has saved its first checkpoint (a marker file makes it
    fire once: Tune stores this callback with the experiment and restores it on resume)."""

    def __init__(self, marker: str):
        self.marker, self.seen = marker, []

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if trial.trial_id not in self.seen:
            self.seen.append(trial.trial_id)
        if len(self.seen) == 2 and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGINT)
