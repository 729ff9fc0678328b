"""The live view of a sweep (berter.sweep.progress): its table from fake trial states, without
Ray; then a tiny sweep on a pseudo-terminal, whose screen a terminal emulator (pyte) renders.
Off a terminal (the one line per event) is checked by test_sweep_cli's three-trial sweep."""

import io
import os
import pickle
import pty
import re
import sys
import threading

import pytest
import ray
from rich.console import Console

from berter.sweep import run
from berter.sweep.progress import (
    LiveProgress,
    Snapshot,
    TrialView,
    counts,
    render,
    seconds_left,
    trial_view,
)


class FakeTrial:
    """What the view reads of a Tune trial: its id, status, last result and name."""

    def __init__(self, name, status, **result):
        self.trial_id, self.status, self.last_result = name, status, result

    def __str__(self):
        return self.trial_id


def text_of(snap: Snapshot, now: float) -> str:
    console = Console(file=io.StringIO(), width=100, record=True)
    console.print(render(snap, now))
    return console.export_text()


def test_tune_states_map_to_the_views_states_with_asha_stops_and_divergence_told_apart():
    views = [
        trial_view(FakeTrial("a", "RUNNING", epoch=1, epochs_planned=3, dev_score=0.4), "dev_score"),
        trial_view(FakeTrial("b", "PENDING"), "dev_score"),
        trial_view(FakeTrial("c", "TERMINATED", epoch=3, epochs_planned=3), "dev_score"),
        trial_view(FakeTrial("d", "TERMINATED", epoch=1, epochs_planned=3), "dev_score"),
        trial_view(FakeTrial("e", "TERMINATED", epoch=1, epochs_planned=3, diverged=True), "dev_score"),
        trial_view(FakeTrial("f", "ERROR"), "dev_score"),
        trial_view(FakeTrial("g", "PAUSED", epoch=1, epochs_planned=3), "dev_score"),
    ]  # fmt: skip
    assert [v.state for v in views] == [
        "running", "pending", "finished", "stopped", "diverged", "errored", "pending",
    ]  # fmt: skip
    assert views[0].score == 0.4 and views[0].epoch == 1 and views[0].epochs == 3
    nan = trial_view(FakeTrial("h", "RUNNING", epoch=1, dev_score=float("nan")), "dev_score")
    assert nan.score is None  # a diverged epoch's NaN is no score


def test_the_view_counts_every_state_lists_running_trials_and_names_the_best_so_far():
    trials = (
        TrialView("lte_1", "running", epoch=2, epochs=3, score=0.41, best=0.43, best_epoch=1),
        TrialView("ent_2", "running", epoch=1, epochs=3, score=0.38, best=0.38, best_epoch=1),
        TrialView("base_3", "finished", epoch=3, epochs=3, score=0.50, best=0.52, best_epoch=2),
        TrialView("pabee_4", "stopped", epoch=1, epochs=3, score=0.30, best=0.30, best_epoch=1),
        TrialView("slf_5", "errored"),
    )
    snap = Snapshot("demo", "dev_score", "max", total=7, trials=trials, started=100.0,
                    epochs_done=8, epochs_per_trial=3)  # fmt: skip
    # 7 planned, 5 proposed: the searcher's 2 to come are pending
    assert counts(snap) == {"running": 2, "pending": 2, "finished": 1, "stopped": 1,
                            "diverged": 0, "errored": 1}  # fmt: skip
    text = text_of(snap, now=100.0 + 80)
    assert "sweep demo: 1m 20s elapsed" in text
    assert "running 2 · pending 2 · finished 1 · stopped 1 · diverged 0 · errored 1" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if "_" in line[:8]}
    assert rows["lte_1"] == ["2/3", "0.4100", "0.4300"]
    assert rows["ent_2"] == ["1/3", "0.3800", "0.3800"]
    assert "base_3" not in rows and "slf_5" not in rows  # only running trials get a row
    assert "best so far: dev_score 0.5200  base_3 (epoch 2)" in text
    # 1 + 2 epochs left of the running trials, 3 each of the 2 pending: 9 at 10 s per epoch
    assert seconds_left(snap, now=180.0) == pytest.approx(90.0)
    assert "~1m 30s left (at most)" in text


def test_a_minimised_objective_has_the_lowest_best_and_no_estimate_before_the_first_epoch():
    trials = (
        TrialView("a", "running", best=2.5, best_epoch=1),
        TrialView("b", "finished", best=1.5, best_epoch=2),
    )
    snap = Snapshot("s", "avg_exit_layer", "min", total=2, trials=trials, started=0.0)
    text = text_of(snap, now=5.0)
    assert "best so far: avg_exit_layer 1.5000  b (epoch 2)" in text
    assert "time left: estimating" in text
    empty = text_of(Snapshot("s", "dev_score", "max", total=3, started=0.0), now=1.0)
    assert "pending 3" in empty and "best so far: no dev_score reported yet" in empty


def test_off_a_terminal_the_callback_shows_nothing_and_pickles(capsys):
    progress = LiveProgress("s", "dev_score", "max", 2)
    progress.setup(total_num_samples=2)  # stdout is pytest's capture, not a terminal
    assert progress.live is None
    trials = [FakeTrial("a", "RUNNING", epoch=1, epochs_planned=2, dev_score=0.3)]
    progress.on_trial_result(0, trials, trials[0], {"epoch": 1, "dev_score": 0.3})
    progress.on_step_end(0, trials)
    progress.on_experiment_end(trials)
    assert capsys.readouterr().out == ""
    restored = pickle.loads(pickle.dumps(progress))  # Tune stores its callbacks
    assert restored.name == "s" and restored.live is None


# ----------------------------------------------------------------------------- a tiny sweep
def screen_of(raw: bytes, columns: int, lines: int):
    """What a terminal shows after ``raw``: pyte, a VT100 emulator, renders it."""
    pyte = pytest.importorskip("pyte")
    screen = pyte.Screen(columns, lines)
    pyte.ByteStream(screen).feed(raw)
    return [line.rstrip() for line in screen.display]


def test_on_a_terminal_a_sweep_shows_the_live_view(tiny_model, tmp_path, monkeypatch):
    """Two one-epoch trials of a tiny BERT, run by the Python API with stdout on a pty."""
    pytest.importorskip("pyte")
    master, slave = pty.openpty()
    columns, lines = 110, 60
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setenv("LINES", str(lines))
    for var in ("NO_COLOR", "FORCE_TERMINAL", "TTY_INTERACTIVE", "TERM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the slave side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    terminal = open(slave, "w", buffering=1, closefd=True)  # noqa: SIM115 (closed below)
    try:
        monkeypatch.setattr(sys, "stdout", terminal)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        tables = run(data="demo", model=tiny_model, max_train=24, max_dev=16, max_len=32,
                     results=str(tmp_path), name="live", search="lr", num_samples=2, epochs=1,
                     scheduler="fifo")  # fmt: skip
    finally:
        ray.shutdown()
        monkeypatch.undo()
        terminal.close()
    reader.join(timeout=30)
    os.close(master)
    assert set(tables["trials"].status) == {"terminated"} and len(tables["trials"]) == 2
    raw = b"".join(chunks)
    assert b"\x1b[" in raw  # the view redraws itself in place
    # an earlier frame, while the trials ran: their count and the running trials' table
    assert re.search("running [12] · pending".encode(), raw) and b"running trial" in raw
    screen = "\n".join(screen_of(raw, columns, lines))
    # the last view stays on the screen, above the summary, with the final counts
    assert "running 0 · pending 0 · finished 2 · stopped 0 · diverged 0 · errored 0" in screen
    best = tables["trials"].sort_values("dev_score").iloc[-1]
    assert re.search(
        rf"best so far: dev_score {best.dev_score:.4f}  \S*{best.config_id} \(epoch 1\)", screen
    )
    assert re.search(r"sweep live: \S+ elapsed, no trial left", screen)
    # the writer's event lines scrolled above the view, each once
    assert screen.count(" terminated best dev ") == 2
    assert screen.index(" terminated best dev ") < screen.index("best so far")
    assert screen.index("best so far") < screen.index("best trials by dev_score")
