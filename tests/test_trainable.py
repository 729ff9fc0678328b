"""The trainable without a Tune run: config resolution, checkpoints, epoch results, and the
``Trial`` class stepped by hand as Tune steps it (setup, step, save, restore, reset)."""

import threading

import numpy as np
import pytest
import torch
from faults import FaultInjector
from tiny import tiny_backbone, tiny_config

from berter.checkpoint import STATE_FILE, WEIGHTS_FILE, load_model
from berter.config import Config
from berter.errors import ConfigError
from berter.sweep.trainable import (
    CHECKPOINT_FILE,
    OPTIMIZER_FILE,
    RESUME_ONLY,
    Trial,
    TrialSpec,
    epoch_result,
    load_checkpoint,
    save_checkpoint,
    to_plain,
)
from berter.train.callbacks import TrainerCallback
from berter.train.run import TrainingRun
from berter.variants import Variant

SLF_ALT = {
    "smart": "off",
    "cos_loss": "off",
    "concat": "after_embed",
    "slf": "on",
    "strategy": "smart_alt",
    "exit_method": "none",
}


def base() -> dict:
    return tiny_config().to_dict()


def test_resolve_merges_base_variant_and_sampled_values():
    variant = Variant(SLF_ALT, "SLF + Smart Alt")
    spec = TrialSpec(base(), [Variant(dict(SLF_ALT, slf="off", strategy="final")), variant])
    cfg = spec.resolve({"variant": variant.name, "lr": 3e-4, "batch_size": 4})
    assert (cfg.slf, cfg.strategy, cfg.lr, cfg.batch_size) == ("on", "smart_alt", 3e-4, 4)
    assert cfg.max_train == base()["max_train"]  # not searched: stays at the base value


def test_resolve_rejects_unknown_variants_and_invalid_values():
    spec = TrialSpec(base(), [Variant(SLF_ALT)])
    with pytest.raises(KeyError, match="unknown variant"):
        spec.resolve({"variant": "smart=bogus"})
    with pytest.raises(ConfigError, match="dropout"):
        spec.resolve({"variant": Variant(SLF_ALT).name, "dropout": 1.5})


def test_to_plain_turns_numpy_into_weights_only_types_and_names_the_culprit():
    state = {"best": np.float64(0.5), "n": np.int64(3), "curve": np.arange(3.0), "ok": [1, "a"]}
    plain = to_plain(state)
    assert type(plain["best"]) is float and type(plain["n"]) is int
    assert torch.equal(plain["curve"], torch.arange(3.0, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"state\['inner'\]\['obj'\]"):
        to_plain({"inner": {"obj": object()}})


def test_checkpoint_loads_with_weights_only_and_resumes_the_run(tmp_path):
    cfg = tiny_config(epochs=2, **SLF_ALT)  # smart_alt + SLF: strategy state to keep
    run = TrainingRun(cfg, backbone=tiny_backbone())
    report = run.train_epoch()
    run.strategy.end_epoch(0, np.float64(0.4))  # a numpy score must not break the checkpoint
    save_checkpoint(run, tmp_path, {"started_at": "2025-01-01T00:00:00+00:00"})
    torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)  # raises on non-tensor objects

    fresh = TrainingRun(cfg, backbone=tiny_backbone(seed=1))
    meta = load_checkpoint(fresh, tmp_path)
    assert meta["started_at"].startswith("2025")
    assert fresh.epoch == report.epoch == 1
    assert fresh.strategy.state_dict() == to_plain(run.strategy.state_dict())
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, fresh.model.state_dict()[k]), k
    # both continue identically: same optimizer/scheduler/RNG state
    assert run.train_epoch().train_loss == pytest.approx(fresh.train_epoch().train_loss, rel=1e-5)


def test_optimiser_state_is_a_file_of_its_own_that_the_last_epoch_leaves_out(tmp_path):
    cfg = tiny_config(epochs=1, ema_decay=0.9)  # a weight average: its raw weights resume-only
    run = TrainingRun(cfg, backbone=tiny_backbone())
    run.train_epoch()
    (tmp_path / "full").mkdir()
    (tmp_path / "last").mkdir()
    save_checkpoint(run, tmp_path / "full", {})
    save_checkpoint(run, tmp_path / "last", {}, optimizer=False)
    full = torch.load(tmp_path / "full" / CHECKPOINT_FILE, weights_only=True)
    resume = torch.load(tmp_path / "full" / OPTIMIZER_FILE, weights_only=True)
    assert set(resume) == set(RESUME_ONLY) and None not in resume.values()
    assert all(full[k] is None for k in RESUME_ONLY)  # state.pt: the weights, not the moments
    assert not (tmp_path / "last" / OPTIMIZER_FILE).exists()
    size = {d: (tmp_path / d / CHECKPOINT_FILE).stat().st_size for d in ("full", "last")}
    assert size["full"] == size["last"]
    assert (tmp_path / "full" / OPTIMIZER_FILE).stat().st_size > 2 * size["full"]  # m, v, raw
    # a resume from the last epoch's finds the run finished, with the trained weights
    fresh = TrainingRun(cfg, backbone=tiny_backbone(seed=1))
    load_checkpoint(fresh, tmp_path / "last")
    assert fresh.epoch == fresh.strategy.num_epochs
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, fresh.model.state_dict()[k]), k


def test_a_run_resumed_mid_phase_gets_its_optimiser_state_back_from_its_own_file(tmp_path):
    cfg = tiny_config(epochs=2)
    run = TrainingRun(cfg, backbone=tiny_backbone())
    run.train_epoch()
    save_checkpoint(run, tmp_path, {})
    fresh = TrainingRun(cfg, backbone=tiny_backbone(seed=1))
    load_checkpoint(fresh, tmp_path)
    saved, loaded = run.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert loaded["state"] and loaded["state"].keys() == saved["state"].keys()
    for k, moments in saved["state"].items():
        assert torch.equal(moments["exp_avg_sq"], loaded["state"][k]["exp_avg_sq"]), k
    assert fresh.scheduler.state_dict() == run.scheduler.state_dict()


def test_trial_checkpoint_is_an_inference_checkpoint_without_a_second_copy_of_weights(tmp_path):
    assert CHECKPOINT_FILE == STATE_FILE  # berter.infer reads the trainable's state file
    cfg = tiny_config(strategy="joint", exit_method="confidence")
    run = TrainingRun(cfg, backbone=tiny_backbone())
    run.train_epoch()
    save_checkpoint(run, tmp_path, {"epoch": 1}, {"sst": 0.8, "para": 0.7, "sts": None})
    assert not (tmp_path / WEIGHTS_FILE).exists()
    loaded_cfg, model, thresholds = load_model(tmp_path)
    assert loaded_cfg.exit_method == "confidence"
    assert thresholds == {"sst": 0.8, "para": 0.7, "sts": None}
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_epoch_result_counts_main_epochs_without_the_slf_warmup():
    run = TrainingRun(
        tiny_config(epochs=1, **{**SLF_ALT, "strategy": "joint"}), backbone=tiny_backbone()
    )
    run.fit()
    rows = [epoch_result(run, rep, run.strategy.num_epochs) for rep in run.history]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["main_epoch"] for r in rows] == [0, 1]  # the SLF epoch is not an ASHA step
    assert rows[0]["phase"] == "slf" and rows[-1]["epochs_planned"] == 2
    assert {"dev_score", "sst_acc", "avg_exit_layer", "layer_scores", "diverged"} <= set(rows[0])


def test_diverged_flag_is_reported():
    run = TrainingRun(
        tiny_config(epochs=2), backbone=tiny_backbone(), callbacks=[FaultInjector("nan@1")]
    )
    run.fit()
    rows = [epoch_result(run, rep, 2) for rep in run.history]
    assert len(rows) == 1 and rows[0]["diverged"] is True  # fit stops after a non-finite loss


def test_config_defaults_are_the_single_source_for_unsearched_values():
    spec = TrialSpec({"data_dir": None}, [Variant({k: getattr(Config(), k) for k in SLF_ALT})])
    cfg = spec.resolve({"variant": spec.variants[0].name})
    assert (cfg.lr, cfg.batch_size, cfg.dropout) == (Config.lr, Config.batch_size, Config.dropout)


# ----------------------------------------------------------------------------- Trial
def make_trial(
    model: str, speedup_examples: int = 0, callbacks: tuple[str, ...] = (), **base_overrides
) -> type[Trial]:
    """``Trial`` bound to a trial spec as ``tune.with_parameters`` binds it, but without Ray."""
    variant = Variant(dict(SLF_ALT, slf="off", strategy="joint", exit_method="confidence"))
    values = {**tiny_config(epochs=2, model=model).to_dict(), **base_overrides}
    spec = TrialSpec(values, [variant], speedup_examples=speedup_examples, callbacks=callbacks)

    class Bound(Trial):
        def setup(self, config):
            super().setup(config, data=None, spec=spec)

    return Bound


def test_trial_steps_one_epoch_at_a_time_on_the_calling_thread(tiny_model):
    seen = []

    class Watched(make_trial(tiny_model)):
        def step(self):
            seen.append(threading.current_thread())
            return super().step()

    trial = Watched({"lr": 2e-3})
    first, second = trial.step(), trial.step()
    assert seen == [threading.current_thread()] * 2  # Tune calls step() on the actor's main thread
    run = trial.group.runs[0]
    assert run.cfg.lr == 2e-3 and run.epoch == 2
    assert (first["epoch"], first["should_checkpoint"], first["done"]) == (1, True, False)
    assert (second["epoch"], second["should_checkpoint"], second["done"]) == (2, True, True)
    assert first["setup_seconds"] == second["setup_seconds"] > 0
    assert first["variant"] == second["variant"] and "dev_score" in second


def test_trial_restored_from_its_last_checkpoint_reports_that_epoch_without_training(
    tiny_model, tmp_path
):
    cls = make_trial(tiny_model, speedup_examples=8)
    trial = cls({})
    trial.step()
    last = trial.step()
    assert last["done"] and last["speedup_wall"] > 0
    trial.save_checkpoint(str(tmp_path))
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["optimizer"] is None

    again = cls({})
    again.load_checkpoint(str(tmp_path))
    result = again.step()
    assert again.group.epoch == 2 and again.report is None  # nothing trained
    assert result["done"] and result["started_at"] == last["started_at"]
    assert result["dev_score"] == pytest.approx(last["dev_score"])
    assert result["epoch"] == 2 and "should_checkpoint" not in result


def test_trial_resumed_mid_run_continues_from_the_checkpointed_epoch(tiny_model, tmp_path):
    cls = make_trial(tiny_model)
    trial = cls({})
    trial.step()
    trial.save_checkpoint(str(tmp_path))
    expected = trial.step()

    resumed = cls({})
    resumed.load_checkpoint(str(tmp_path))
    result = resumed.step()
    assert result["epoch"] == 2 and result["started_at"] == expected["started_at"]
    assert result["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)


def test_a_diverged_epoch_ends_the_trial_without_asking_for_a_checkpoint(
    tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("BERTER_TEST_FAULT", "nan@1")
    monkeypatch.setenv("BERTER_TEST_FAULT_DIR", str(tmp_path))
    trial = make_trial(tiny_model, callbacks=("faults:FaultInjector",))({})
    result = trial.step()
    assert result["diverged"] and result["done"] and "should_checkpoint" not in result
    assert (tmp_path / "trial-0").read_text() == trial.trial_id  # claimed under its trial id


class Stop(TrainerCallback):
    """Early stopping as a user writes it: stop after the first epoch."""

    def on_evaluate(self, run, report, dev):
        run.should_stop = True


def test_a_trial_runs_the_sweeps_callbacks_and_a_callback_can_end_it_early(tiny_model, tmp_path):
    cls = make_trial(tiny_model, callbacks=("test_trainable:Stop",))
    trial = cls({})
    assert [type(c) for c in trial.group.runs[0].callbacks] == [Stop]
    result = trial.step()
    assert result["done"] and result["epoch"] == 1 and result["epochs_planned"] == 2
    trial.save_checkpoint(str(tmp_path))
    again = cls({})
    again.load_checkpoint(str(tmp_path))
    assert again.step()["done"] and again.group.runs[0].epoch == 1  # restored: stays stopped


def test_reset_config_builds_the_next_trial_in_the_same_worker(tiny_model):
    trial = make_trial(tiny_model)({"lr": 2e-3})
    trial.step()
    assert trial.reset_config({"lr": 5e-4}) is True  # so Tune reuses the actor
    run = trial.group.runs[0]
    assert run.cfg.lr == 5e-4 and run.epoch == 0 and trial.report is None
    assert trial.step()["epoch"] == 1


def test_reset_config_frees_the_finished_run_before_building_the_next(tiny_model, monkeypatch):
    import weakref

    from berter.train import run as train

    trial = make_trial(tiny_model)({"lr": 2e-3})
    trial.step()
    old_model = weakref.ref(trial.group.runs[0].model)
    alive_at_build = []

    class Watched(train.TrainingRun):
        def __init__(self, *args, **kwargs):
            alive_at_build.append(old_model() is not None)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train, "TrainingRun", Watched)
    trial.reset_config({"lr": 5e-4})
    assert alive_at_build == [False]  # a reused worker never holds two trials' weights
    trial.cleanup()
    assert trial.group is None


def test_a_trial_without_speedup_examples_skips_the_timing(tiny_model):
    """--speedup-examples 0: the trial ends without timing inference (no speedup_wall)."""
    trial = make_trial(tiny_model, speedup_examples=0)({})
    trial.step()
    last = trial.step()
    assert last["done"] and "speedup_wall" not in last and "speedup_seconds" not in last
