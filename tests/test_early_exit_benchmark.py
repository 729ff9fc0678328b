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
