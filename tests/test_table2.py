"""benchmarks/table2.py: the Table 2 command it runs, and its per-preset table over seeds."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from results_fixture import synthetic_results, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import table2  # noqa: E402

from berter.results import t_interval  # noqa: E402


def parsed(*argv: str):
    """table2's options as its main resolves them (scale filled in), without running."""
    captured = {}

    def fake_run(cmd, cwd):
        captured["cmd"] = cmd
        raise SystemExit(0)

    old, table2.subprocess.run = table2.subprocess.run, fake_run
    try:
        table2.main(list(argv))
    except SystemExit:
        pass
    finally:
        table2.subprocess.run = old
    return captured["cmd"]


def test_the_full_run_is_the_paper_presets_with_seeds_and_fixed_hyperparameters():
    cmd = parsed("--results", "/tmp/r")
    text = " ".join(cmd)
    assert "--variants paper" in text and "--search none" in text and "--seeds 3" in text
    assert "--max-train 1000" in text and "--max-dev 1000" in text and "--epochs 3" in text


def test_resume_continues_the_named_run_and_the_probe_is_one_seed_of_one_row():
    assert parsed("--resume")[-3:] == ["--results", str(table2.ROOT / "results"), "--resume"]
    probe = " ".join(parsed("--probe"))
    assert "--variants Baseline" in probe and "--seeds 1" in probe and "table2-probe" in probe


def seeded(seeds: int) -> pd.DataFrame:
    """The synthetic paper sweep, each row run with ``seeds`` seeds (dev score shifted per seed)."""
    trials = synthetic_results()["trials"]
    runs = []
    for k in range(seeds):
        t = trials.copy()
        t["config_id"], t["seed"] = t.trial_id, k
        t["trial_id"] = t.trial_id + f"-seed{k}"
        t["dev_score"] = t.dev_score + 0.01 * k
        runs.append(t)
    return pd.concat(runs, ignore_index=True)


def test_the_report_gives_each_preset_its_mean_and_interval_over_seeds(tmp_path, capsys):
    trials = seeded(3)
    root = write_results(tmp_path / "table2", {**synthetic_results(), "trials": trials})
    headline = table2.report(root)
    out = capsys.readouterr().out
    base = trials[trials.preset == "Baseline"].dev_score.to_numpy()
    mean, low, high, _ = t_interval(base)
    assert np.isclose(mean, base.mean())
    assert f"{mean:.3f} [{low:.3f}, {high:.3f}]" in out  # the Baseline's row
    assert headline.startswith("table2: 12/12 presets, 3-3 seeds; best ")
    assert f"Baseline {mean:.3f} [{low:.3f}, {high:.3f}]" in headline
