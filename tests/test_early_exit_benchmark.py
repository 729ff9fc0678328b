"""benchmarks/early_exit.py: its table and its one-line errors (no model is trained here)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import early_exit  # noqa: E402

ROW = {
    "method": "confidence", "calibration": "shared", "task": "para", "metric": "acc", "final": 0.8, "exit": 0.796,
    "threshold": 0.92, "avg_layer": 3.07, "n": 6, "speedup_b1": 1.6, "speedup_b32": 2.1,
    "seconds_full_b1": 2.0, "seconds_exit_b1": 1.25, "timed_layer": 3.13,
    "oracle_layer": 3.07, "oracle_metric": 0.796,
}  # fmt: skip


def test_table_shows_the_exit_layer_of_the_examples_timed():
    head, rule, line = early_exit.markdown([ROW]).splitlines()
    cells = [c.strip() for c in line.strip("|").split("|")]
    names = [c.strip() for c in head.strip("|").split("|")]
    assert len(cells) == len(names) == rule.count("---")
    assert cells[names.index("timed exit layer")] == "3.13"
    assert cells[names.index("avg exit layer")] == "3.07/6"


@pytest.mark.parametrize("value", ["0", "-3"])
def test_speed_examples_below_one_is_a_one_line_error(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        early_exit.main(["--data-dir", str(tmp_path), "--speed-examples", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: argument --speed-examples: expected an integer >= 1, got '{value}'"


def test_table_and_headline_name_the_calibration_and_per_layer_thresholds():
    layered = {**ROW, "calibration": "per-layer", "threshold": (0.96, 0.94, 0.3, None, None),
               "seconds_exit_b1": 0.9}  # fmt: skip
    lines = early_exit.markdown([ROW, layered]).splitlines()
    names = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells[names.index("calibration")] == "per-layer"
    assert cells[names.index("threshold")] == "0.96/0.94/0.3/-/-"
    line = early_exit.headline([ROW, layered])
    assert line.startswith("headline: confidence (per-layer thresholds) 2.22x")


def test_unknown_calibration_is_a_one_line_error(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert early_exit.main(["--data-dir", str(data), "--calibration", "shared,best"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --calibration takes shared and/or per-layer, got 'shared,best'"


def default_trial_args(tmp_path, *argv):
    p = early_exit.argparse.Namespace(
        data_dir=tmp_path, train_threads=None, seed=0, tolerance=None, quick=False
    )
    for k, v in zip(argv[::2], argv[1::2], strict=True):
        setattr(p, k, v)
    return p


def test_default_trial_is_issue_32s_variant_and_budget_with_config_defaults(tmp_path):
    from berter.config import Config

    s = {"default_trial": early_exit.default_trial_settings(False), "set": {}}
    cfg = early_exit.default_trial_config(default_trial_args(tmp_path), s)
    assert cfg.variant == "smart=off,cos=off,concat=before,slf=off,strategy=alternating,exit=confidence"
    assert (cfg.max_train, cfg.epochs, cfg.max_dev) == (2000, 2, 400)
    assert s["default_trial"]["speed_examples"] == 400  # every dev example the issue timed
    defaults = Config()
    for name in ("lr", "batch_size", "max_len", "calib_fraction", "calib_max", "exit_per_layer",
                 "exit_distill", "exit_tolerance", "dropout"):  # fmt: skip
        assert getattr(cfg, name) == getattr(defaults, name), name
    s["set"] = {"exit_distill": 1.0}
    assert early_exit.default_trial_config(default_trial_args(tmp_path), s).exit_distill == 1.0


TRIAL_ROW = {
    "choice": "before", "calibration": "shared", "default": True, "task": "sst", "metric": "acc",
    "final": 0.4, "exit": 0.398, "threshold": 0.4, "avg_layer": 5.59, "n": 6,
    "expected_b1": 0.93, "expected_b32": 1.02, "speedup_b1": 0.95, "speedup_b32": 1.04,
    "timed_layer": 5.6,
}  # fmt: skip


def test_default_trial_table_shows_before_and_after_with_expected_and_measured_speed():
    after = {**TRIAL_ROW, "choice": "after", "threshold": (None, None, None, 0.5, 0.4),
             "avg_layer": 5.7, "expected_b1": 1.1, "speedup_b1": 1.08, "speedup_b32": 1.12}
    other = {**after, "calibration": "per-layer", "default": False, "speedup_b1": 1.5}
    lines = early_exit.default_trial_markdown([TRIAL_ROW, after, other]).splitlines()
    names = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(names) == lines[1].count("---") == len(cells[0])
    col = {n: i for i, n in enumerate(names)}
    assert [c[col["choice"]] for c in cells] == ["before", "after", "after"]
    assert cells[1][col["calibration"]] == "shared (default)"
    assert cells[1][col["threshold"]] == "-/-/-/0.5/0.4"
    assert cells[0][col["expected b1"]] == "0.93x" and cells[0][col["speedup b1"]] == "0.95x"
    line = early_exit.default_trial_headline([TRIAL_ROW, after, other])
    assert line == ("default trial (6 layers), after: sst 1.08x (b32 1.12x) at 99.5% "
                    "(target >= 1.3x at >= 99%)")  # fmt: skip
