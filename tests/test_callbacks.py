"""Training callbacks: the hooks the loop calls, early stopping from a callback, loading a
user's callback class by its dotted path, and the test-only fault injector built on them."""

import time
from types import SimpleNamespace

import pytest
import torch
from faults import FaultInjector, claim_fault, faults_from_env
from tiny import tiny_backbone, tiny_config

from berter.errors import ConfigError
from berter.train.callbacks import EpochLog, TrainerCallback, build_callbacks, load_callback
from berter.train.run import TrainingRun


class Recorder(TrainerCallback):
    """Every hook call, in order (steps counted per epoch)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def on_train_begin(self, run):
        self.calls.append(("train_begin", run.epoch))

    def on_epoch_begin(self, run, epoch):
        self.calls.append(("epoch_begin", epoch))

    def on_step_end(self, run, step, loss):
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0
        if self.calls[-1][0] == "steps":
            self.calls[-1] = ("steps", self.calls[-1][1] + 1)
        else:
            self.calls.append(("steps", 1))

    def on_epoch_end(self, run, report):
        self.calls.append(("epoch_end", report.epoch, bool(report.metrics)))

    def on_evaluate(self, run, report, dev):
        self.calls.append(("evaluate", report.epoch, report.metrics["dev_score"] == dev.dev_score))

    def on_train_end(self, run):
        self.calls.append(("train_end", run.epoch))


class StopAfterFirstEpoch(TrainerCallback):
    def on_evaluate(self, run, report, dev):
        run.should_stop = True


def test_the_loop_calls_every_hook_in_order():
    recorder = Recorder()
    run = TrainingRun(tiny_config(epochs=2), backbone=tiny_backbone(), callbacks=[recorder])
    run.fit()
    steps = [len(run.epoch_batches(e)) for e in range(2)]
    assert recorder.calls == [
        ("train_begin", 0),
        ("epoch_begin", 0), ("steps", steps[0]), ("epoch_end", 1, False), ("evaluate", 1, True),
        ("epoch_begin", 1), ("steps", steps[1]), ("epoch_end", 2, False), ("evaluate", 2, True),
        ("train_end", 2),
    ]  # fmt: skip


def test_a_callback_stops_training_early_and_a_resumed_run_stays_stopped():
    cfg = tiny_config(epochs=3)
    run = TrainingRun(cfg, backbone=tiny_backbone(), callbacks=[StopAfterFirstEpoch()])
    run.fit()
    assert run.epoch == 1 and run.finished and len(run.history) == 1
    resumed = TrainingRun(cfg, backbone=tiny_backbone())
    resumed.load_state_dict(run.state_dict())
    assert resumed.finished  # a trial restored from that checkpoint does not train on


def test_the_epoch_log_writes_one_line_per_epoch():
    lines = []
    run = TrainingRun(tiny_config(epochs=2), backbone=tiny_backbone(), callbacks=[EpochLog(lines.append)])
    run.fit()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2 [main] loss ")


def test_a_callback_class_is_loaded_by_its_dotted_path():
    assert load_callback("test_callbacks:Recorder") is Recorder
    assert load_callback("test_callbacks.Recorder") is Recorder
    (built,) = build_callbacks(["test_callbacks:Recorder"])
    assert isinstance(built, Recorder)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("Recorder", "give package.module:ClassName"),
        ("no_such_module_xyz:Thing", "cannot import no_such_module_xyz"),
        ("test_callbacks:Missing", "test_callbacks has no Missing"),
        ("torch.nn:Linear", "not a subclass of berter.train.callbacks.TrainerCallback"),
    ],
)
def test_a_bad_callback_path_is_a_one_line_error(path, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_callback(path)
    assert "\n" not in str(info.value)


def test_a_callback_that_cannot_be_built_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("BERTER_TEST_FAULT", "explode@1")
    with pytest.raises(ConfigError, match=r"--callback faults:FaultInjector: .*bad entry 'explode@1'"):
        build_callbacks(["faults:FaultInjector"])


def test_the_train_command_line_rejects_a_bad_callback_in_one_line(capsys):
    from berter.train.cli import main

    assert main(["--callback", "no_such_module_xyz:Thing"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "cannot import no_such_module_xyz" in captured.err


# ----------------------------------------------------------------------------- fault injector
def test_faults_are_claimed_once_each_in_start_order(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTER_TEST_FAULT", "raise@2, none ,nan@1:once")
    faults = faults_from_env()
    claims = [claim_fault(faults, tmp_path, t) for t in ("a", "b", "c", "d")]
    assert claims == ["raise@2", None, "nan@1", None]
    # restarts: a persistent fault fires again, a ":once" fault is spent
    assert claim_fault(faults, tmp_path, "a") == "raise@2"
    assert claim_fault(faults, tmp_path, "c") is None
    monkeypatch.setenv("BERTER_TEST_FAULT", "raise@0")
    with pytest.raises(ConfigError, match="bad entry 'raise@0'"):
        faults_from_env()


def test_an_injected_raise_fails_its_epoch():
    run = TrainingRun(tiny_config(epochs=2), backbone=tiny_backbone(),
                      callbacks=[FaultInjector("raise@2")])  # fmt: skip
    run.next_epoch()
    with pytest.raises(RuntimeError, match="injected fault in epoch 2"):
        run.next_epoch()
    assert run.epoch == 1


def test_an_injected_stall_pauses_only_after_an_epoch_this_process_trained(monkeypatch, tmp_path):
    paused = []  # the pause itself waits up to STALL_SECONDS: recorded here instead
    monkeypatch.setattr(FaultInjector, "pause", lambda self, run, release: paused.append(release))
    cfg = tiny_config(epochs=2)
    run = TrainingRun(cfg, backbone=tiny_backbone(), callbacks=[FaultInjector("stall@1")])
    run.next_epoch()
    state = run.state_dict()
    assert paused == []
    run.next_epoch()
    assert paused == [False]  # a stall: not released by the test, only killed
    restored = TrainingRun(cfg, backbone=tiny_backbone(), callbacks=[FaultInjector("stall@1")])
    restored.load_state_dict(state)
    restored.next_epoch()  # restored from epoch 1's checkpoint: no second stall
    assert paused == [False]


def test_a_held_run_waits_until_the_test_releases_it(tmp_path):
    import faults

    injector = FaultInjector("hold@1")
    injector.directory = str(tmp_path)
    (tmp_path / faults.RELEASE).touch()
    started = time.monotonic()
    injector.pause(SimpleNamespace(trial_id="t"), release=True)  # released already: returns
    assert time.monotonic() - started < 5 and (tmp_path / "held-t").exists()


# ----------------------------------------------------------------------------- the sweep option
def test_sweep_callbacks_are_saved_in_the_plan_and_kept_on_resume(tmp_path):
    import json

    from berter.sweep.cli import build_parser
    from berter.sweep.plan import Plan, make_plan

    argv = ["--search", "lr", "--data", "demo", "--max-train", "8", "--results", str(tmp_path),
            "--callback", "test_callbacks:Recorder", "--callback", "faults:FaultInjector"]  # fmt: skip
    plan, _ = make_plan(build_parser().parse_args(argv))
    assert plan.callbacks == ["test_callbacks:Recorder", "faults:FaultInjector"]
    assert Plan.from_json(plan.to_json()).callbacks == plan.callbacks
    older = {k: v for k, v in json.loads(plan.to_json()).items() if k != "callbacks"}
    assert Plan.from_json(json.dumps(older)).callbacks == []  # a sweep.json from before
