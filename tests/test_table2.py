"""benchmarks/table2.py: the Table 2 command it runs, and its per-preset table over seeds."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from results_fixture import synthetic_results, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import table2  # noqa: E402

from berter.results import t_interval  # noqa: E402

DEV = "dev_score_exit"  # the claims' dev score (table2.Claim)


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
    assert "--max-train 400" in text and "--max-dev 400" in text and "--epochs 3" in text


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
        t[DEV] = t.dev_score  # what the claims compare: the score at the exit (equal here)
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


def with_seed_effect(trials: pd.DataFrame, preset: str, metric: str, shift: float) -> pd.DataFrame:
    """``trials`` with ``preset``'s ``metric`` moved by ``shift`` plus a little seed noise."""
    out = trials.copy()
    rows = out.preset == preset
    out.loc[rows, metric] = out.loc[rows, metric] + shift + 0.001 * out.loc[rows, "seed"]
    return out


def test_a_claim_is_supported_when_its_paired_interval_excludes_zero_in_its_direction():
    trials = seeded(3)
    ref = trials.loc[trials.preset == "SLF", DEV].iloc[0]
    trials.loc[trials.preset == "SLF + Conc Before Embed", DEV] = ref
    up = with_seed_effect(trials, "SLF + Conc Before Embed", DEV, 0.05)
    down = with_seed_effect(trials, "SLF + Conc Before Embed", DEV, -0.05)
    claim = table2.CLAIMS[0]
    assert claim.pairs == (("SLF + Conc Before Embed", "SLF"),)
    assert table2.claim_rows(up)[0]["verdict"] == "supported"
    assert table2.claim_rows(down)[0]["verdict"] == "reversed"
    noisy = trials.copy()  # differences of +0.02, -0.02, +0.001 over the three seeds
    rows = noisy.preset == "SLF + Conc Before Embed"
    noisy.loc[rows, DEV] = noisy.loc[rows, DEV] + noisy.loc[rows, "seed"].map(
        {0: 0.02, 1: -0.02, 2: 0.001}
    )
    assert table2.claim_rows(noisy)[0]["verdict"] == "not supported"


def test_the_paired_difference_is_the_t_interval_of_per_seed_differences():
    trials = with_seed_effect(seeded(3), "SLF", "dev_score", 0.03)
    got = table2.paired(trials, "SLF", "Baseline", "dev_score")
    a = trials[trials.preset == "SLF"].sort_values("seed").dev_score.to_numpy()
    b = trials[trials.preset == "Baseline"].sort_values("seed").dev_score.to_numpy()
    want = t_interval(a - b)
    assert np.allclose(got[:3], want[:3]) and got.n == 3


def test_early_exit_keeps_the_score_only_when_it_is_also_faster():
    interval = t_interval([-0.004, -0.002, -0.003])
    assert table2.verdict(interval, 1, "keeps", t_interval([1.6, 1.7, 1.65])) == "supported"
    assert table2.verdict(interval, 1, "keeps", t_interval([0.95, 1.1, 1.0])) == "not supported"
    assert table2.verdict(t_interval([-0.05, -0.04, -0.06]), 1, "keeps") == "reversed"


def test_one_seed_gives_no_verdict_and_the_comparison_names_the_axes_apart():
    rows = table2.claim_rows(seeded(1))
    assert rows[0]["verdict"] == "n=1, no verdict"
    assert rows[0]["apart"] == "concat=before_embed"
    slf = [r for r in rows if r["pair"].startswith("SLF - Baseline")][0]
    assert "slf=on" in slf["apart"] and "smart=para" in slf["apart"]  # a confounded pair says so


def test_the_best_row_claim_compares_it_with_every_other_row(tmp_path, capsys):
    trials = with_seed_effect(seeded(3), table2.BEST_ROW, DEV, 0.5)
    rows = table2.claim_rows(trials)
    start = next(i for i, r in enumerate(rows) if r["claim"].endswith("is the best row"))
    assert rows[start]["pair"] == f"highest mean dev_score_exit: {table2.BEST_ROW}"
    assert rows[start]["overall"] == "supported" and len(rows) - start == 1 + 11
    write_results(tmp_path / "table2", {**synthetic_results(), "trials": trials})
    assert table2.main(["--results", str(tmp_path), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| Baseline | 3 |" in out and "| SLF + Smart Alt + Early Exit is the best row |" in out


def test_a_claim_is_judged_on_the_pairs_whose_rows_have_run():
    trials = seeded(3)
    trials = trials[trials.preset != "SLF + Smart Alt"]  # one of the claim's two pairs not run
    rows = table2.claim_rows(with_seed_effect(trials, "SLF + Smart Alt + Early Exit", DEV, 0.3))
    start = next(i for i, r in enumerate(rows) if r["claim"] == "Smart Alternating adds to SLF")
    assert [r["verdict"] for r in rows[start : start + 2]] == ["not run", "supported"]
    assert rows[start]["overall"] == "supported"


def test_the_best_row_claim_is_reversed_when_another_row_is_ahead_beyond_the_seeds():
    trials = with_seed_effect(seeded(3), "Cos Loss + Early Exiting", DEV, 0.3)
    rows = table2.claim_rows(trials)
    start = next(i for i, r in enumerate(rows) if r["claim"].endswith("is the best row"))
    assert rows[start]["pair"] == "highest mean dev_score_exit: Cos Loss + Early Exiting"
    assert rows[start]["overall"] == "reversed"


def test_a_claim_whose_pairs_disagree_says_how_many_support_it():
    assert table2.overall_verdict(["supported", "not supported", "not run"]) == (
        "mixed: 1 supported, 1 not supported")
    assert table2.overall_verdict(["reversed", "not supported"]) == "mixed: 1 not supported, 1 reversed"
    assert table2.overall_verdict(["not supported", "not supported"]) == "not supported"
    assert table2.overall_verdict(["supported", "not supported"], "best") == "not supported"
    assert table2.overall_verdict(["not run"], "best") == "not run"


def test_the_claims_compare_early_exit_rows_at_their_exit_not_their_final_layer():
    """The paper prints its early-exit rows' scores with early exit on: a row whose final layer
    keeps the score but whose exits lose it does not keep the score."""
    trials = seeded(3)
    ee = trials.preset == "SLF + Early Exiting"
    trials.loc[ee, "dev_score"] = trials.loc[trials.preset == "SLF", "dev_score"].to_numpy()
    trials.loc[ee, DEV] = trials.loc[ee, "dev_score"] - 0.05 - 0.001 * trials.loc[ee, "seed"]
    trials.loc[ee, "speedup_wall"] = [1.5, 1.6, 1.7]
    rows = table2.claim_rows(trials)
    pair = next(r for r in rows if r["pair"].startswith("SLF + Early Exiting - SLF:"))
    assert pair["verdict"] == "reversed" and pair["pair"].split(": ")[1].startswith("-0.05")
