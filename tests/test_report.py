"""The sweep report: tables checked against the Parquet rows, files, images, bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from results_fixture import REPEATED, synthetic_results, write_results

import berter.sweep.store
from berter.config import AXES, Config
from berter.errors import DataError
from berter.report.analysis import Report, build_report, finished_trials, prepare_trials
from berter.report.cells import DASH, format_duration
from berter.report.cli import main
from berter.report.figures import FIGURE_NAMES, add_figures
from berter.report.hyperparameters import HYPERPARAMETERS, importance
from berter.report.render import write_report
from berter.report.tables import early_exit_point
from berter.sweep.space import SPACE
from berter.sweep.store import read_results
from berter.variants import PAPER_TABLE2

ROOT = Path(__file__).resolve().parents[1]
FINISHED = ["terminated", "stopped-early"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict[str, pd.DataFrame]]:
    """A live paper sweep: 12 presets plus repeats, an early stop, running/error/diverged."""
    tables = synthetic_results(extra=True)
    return write_results(tmp_path_factory.mktemp("results") / "paper", tables), tables


def full_report(path) -> Report:
    """What the command line builds: the tables, then the figures."""
    report = build_report(path)
    add_figures(report)
    return report


@pytest.fixture(scope="module")
def report(sweep) -> Report:
    return full_report(sweep[0])


def done(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"].isin(FINISHED) & trials["dev_score"].notna()]


def hhmmss(seconds: float) -> str:
    parts = pd.Timedelta(seconds=round(seconds)).components
    return f"{parts.days * 24 + parts.hours:02d}:{parts.minutes:02d}:{parts.seconds:02d}"


# ----------------------------------------------------------------------------- tables
def test_variant_table_has_the_best_finished_trial_of_each_variant(sweep, report):
    trials = sweep[1]["trials"]
    fin = done(trials)
    expected = fin.loc[fin.groupby("variant")["dev_score"].idxmax()].set_index("trial_id")
    table = report.variant_table()

    assert len(table) == fin["variant"].nunique() == 12
    assert set(table["Best Trial"]) == set(expected.index)
    running = trials.loc[trials["status"] == "running", "trial_id"].item()
    assert running not in set(table["Best Trial"])  # its partial 0.99 is ignored
    for _, row in table.iterrows():
        t = expected.loc[row["Best Trial"]]
        assert row["Variant"] == t["preset"]
        # one seed per trial: the value, and "n=1" instead of an interval
        assert row["Dev Score"] == f"{t['dev_score']:.3f} (n=1)"
        assert (row["SST"], row["Paraphrase"], row["STS"]) == tuple(
            f"{t[c]:.3f} (n=1)" for c in ("sst_acc", "para_acc", "sts_corr")
        )
        assert row["Trials"] == str((fin["variant"] == t["variant"]).sum())
        assert row["Seeds"] == "1"
        assert row["Layers Saved"] == f"{100 * t['layers_saved']:.1f}% (n=1)"
        assert row["Paper Dev"] == f"{PAPER_TABLE2[t['preset']]['dev_score']:.3f}"
    repeated = table[table["Variant"] == REPEATED].iloc[0]
    assert repeated["Trials"] == "3"


def test_variant_table_is_sorted_by_dev_score_with_table2_columns_and_hh_mm_ss(sweep, report):
    table = report.variant_table()
    assert list(table.columns[:6]) == [
        "Variant",
        "Dev Score",
        "SST",
        "Paraphrase",
        "STS",
        "Training Time",
    ]
    for col in ("Avg Exit Layer", "Layers Saved", "Wall Speedup", "lr", "batch_size", "dropout"):
        assert col in table.columns
    devs = report.variants["dev_score"].tolist()
    assert devs == sorted(devs, reverse=True)
    seconds = sweep[1]["trials"].set_index("trial_id")["train_seconds"]
    for _, row in table.iterrows():
        assert re.fullmatch(r"\d{2,}:\d{2}:\d{2} \(n=1\)", row["Training Time"])
        assert row["Training Time"] == hhmmss(seconds[row["Best Trial"]]) + " (n=1)"


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "00:00:00"), (59.6, "00:01:00"), (3725.4, "01:02:05"), (90061, "25:01:01"),
     (float("nan"), DASH), (None, DASH)],
)  # fmt: skip
def test_format_duration_is_hh_mm_ss(seconds, text):
    assert format_duration(seconds) == text


def test_hyperparameter_columns_are_the_ones_that_vary(report):
    assert report.hyperparameters == ["lr", "batch_size", "dropout"]  # the fixture's search


def test_a_searchable_setting_that_varies_is_shown_and_ranked(tmp_path, sweep):
    """The report's hyperparameters are the search space's: qexit_beta (searchable, and once
    missing from the report's own list) appears in the table and the importance when it varies."""
    tables = {k: v.copy() for k, v in sweep[1].items()}
    tables["trials"]["qexit_beta"] = np.linspace(0.1, 1.0, len(tables["trials"]))
    rep = build_report(write_results(tmp_path / "r", tables))
    assert rep.hyperparameters == ["lr", "batch_size", "dropout", "qexit_beta"]  # SPACE's order
    assert "qexit_beta" in rep.variant_table().columns and "qexit_beta" in rep.importance
    assert set(HYPERPARAMETERS) == {p.field for p in SPACE if p.kind != "axis"}


def test_ablation_means_match_the_finished_trials(sweep, report):
    fin = done(sweep[1]["trials"])
    abl = report.ablation.set_index(["axis", "value"])
    for axis in AXES:
        groups = fin.groupby(axis)
        assert abl.loc[axis]["trials"].sum() == len(fin)
        for value, g in groups:
            row = abl.loc[(axis, value)]
            assert row["trials"] == len(g)
            assert row["mean_dev"] == pytest.approx(g["dev_score"].mean())
            assert row["best_dev"] == pytest.approx(g["dev_score"].max())
            assert row["mean_seconds"] == pytest.approx(g["train_seconds"].mean())
    shown = report.ablation_table()
    first = report.ablation.iloc[0]
    assert shown.iloc[0]["Mean Time"] == hhmmss(first["mean_seconds"]) + " (n=1)"
    assert shown.iloc[0]["Mean Dev"] == f"{first['mean_dev']:.3f} (n=1)"


def test_status_line_counts_every_trial(sweep, report):
    counts = sweep[1]["trials"]["status"].value_counts().to_dict()
    assert report.status_counts == counts
    line = report.status_line()
    for status, n in counts.items():
        assert f"{n} {status}" in line
    assert f"{len(done(sweep[1]['trials']))} finished" in line


# ----------------------------------------------------------------------------- summary
def test_summary_names_best_fastest_within_a_point_and_best_exit_point(tmp_path, sweep):
    tables = {k: v.copy() for k, v in sweep[1].items()}
    trials = tables["trials"]
    fin = done(trials)
    best = fin.loc[fin["dev_score"].idxmax()]
    # make the best trial of another variant within a point of the best, and faster
    others = fin[
        (fin["variant"] != best["variant"]) & (fin["dev_score"] >= best["dev_score"] - 0.01)
    ]
    runner_up = others.loc[others["dev_score"].idxmax()]
    trials.loc[trials["trial_id"] == runner_up["trial_id"], "train_seconds"] = 600.0

    rep = build_report(write_results(tmp_path / "r", tables))
    assert rep.summary.startswith(
        f"Best variant: {best['preset']} with dev score {best['dev_score']:.3f}"
    )
    assert f"Fastest variant within 0.01 of the best: {runner_up['preset']}" in rep.summary
    assert f"{runner_up['dev_score']:.3f} in 00:10:00" in rep.summary

    fin = done(trials)
    ok = fin[(fin["layers_saved"] > 0) & (fin["dev_score_exit"] >= 0.99 * fin["dev_score"])]
    point = ok.loc[ok["layers_saved"].idxmax()]
    assert f"(trial {point['trial_id']})" in rep.summary
    assert f"saving {100 * point['layers_saved']:.1f}% of the layers" in rep.summary


def test_early_exit_point_requires_score_within_one_percent(sweep):
    trials = prepare_trials(sweep[1]["trials"])
    fin = finished_trials(trials).copy()
    fin["dev_score_exit"] = fin["dev_score"] * 0.98  # every exit loses 2%
    assert early_exit_point(fin) is None
    assert early_exit_point(fin, tolerance=0.025) is not None


def test_running_sweep_without_finished_trials_reports_status_only(tmp_path):
    tables = synthetic_results()
    tables["trials"]["status"] = "running"
    rep = full_report(write_results(tmp_path / "live", tables))
    assert rep.variants.empty and rep.variant_table().empty
    assert rep.summary.startswith("No finished trial yet: 12 trials")
    assert any("at least" in n for n in rep.notes)
    paths = write_report(rep, tmp_path / "out")
    assert "12 running" in paths[0].read_text()


# ----------------------------------------------------------------------------- importance
def test_importance_ranks_the_parameter_that_drives_the_score(sweep):
    trials = prepare_trials(synthetic_results()["trials"])
    trials["dev_score"] = 0.4 + 0.05 * np.log10(trials["lr"] / 5e-6) + 0.001 * trials["dropout"]
    imp, evaluator, note = importance(trials)
    assert note is None and evaluator in ("fANOVA", "PED-ANOVA")
    assert set(imp) == {"lr", "batch_size", "dropout", "variant"}  # only what varies
    assert max(imp, key=imp.get) == "lr"
    assert sum(imp.values()) == pytest.approx(1.0)


def test_importance_with_too_few_or_constant_trials_is_a_note():
    trials = prepare_trials(synthetic_results()["trials"])
    imp, _, note = importance(trials.head(3))
    assert imp == {} and "at least 5" in note
    same = trials.assign(lr=1e-5, batch_size=16, dropout=0.3, variant="v")
    imp, _, note = importance(same)
    assert imp == {} and "no hyperparameter varies" in note


def test_importance_falls_back_to_optuna_default_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    trials = prepare_trials(synthetic_results()["trials"])
    trials["dev_score"] = 0.4 + 0.05 * np.log10(trials["lr"] / 5e-6)
    imp, evaluator, _ = importance(trials)
    assert evaluator == "PED-ANOVA" and max(imp, key=imp.get) == "lr"


# ----------------------------------------------------------------------------- layer-wise
def test_layerwise_uses_the_best_trial_of_each_strategy_and_finds_its_peak(sweep, report):
    fin = done(sweep[1]["trials"])
    best = fin.loc[fin.groupby("strategy")["dev_score"].idxmax()].set_index("strategy")
    lw = report.layerwise
    assert set(lw["strategy"]) == set(best.index)
    for _, r in lw.iterrows():
        trial = best.loc[r["strategy"]]
        assert r["trial_id"] == trial["trial_id"]
        column = {"SST": "sst_acc_layers", "Paraphrase": "para_acc_layers", "STS": "sts_corr_layers",
                  "Dev score": "layer_scores"}[r["curve"]]  # fmt: skip
        scores = list(trial[column])
        assert r["best_layer"] == int(np.argmax(scores)) + 1
        assert r["peaks_early"] == (int(np.argmax(scores)) + 1 < len(scores))
    assert lw["peaks_early"].any() and not lw["peaks_early"].all()


def test_missing_per_task_layer_columns_fall_back_to_fixed_layer_exits(tmp_path, sweep):
    tables = {k: v.copy() for k, v in sweep[1].items()}
    layer_cols = [c for c in tables["trials"].columns if c.endswith("_layers")]
    tables["trials"] = tables["trials"].drop(columns=layer_cols)
    rep = build_report(write_results(tmp_path / "r", tables))
    lw = rep.layerwise.set_index(["strategy", "curve"])
    final = lw.loc[("final", "SST")]  # exit method none: the fixed-layer curve in exits.parquet
    original = sweep[1]["trials"].set_index("trial_id").loc[final["trial_id"], "sst_acc_layers"]
    assert final["scores"] == pytest.approx(list(original))
    assert ("smart_alt", "SST") not in lw.index  # early-exit trials have no fixed-layer curve
    assert ("smart_alt", "Dev score") in lw.index
    assert any("sst_acc_layers" in n for n in rep.notes)


def test_missing_exits_and_epochs_skip_their_plots_with_notes(tmp_path, sweep):
    root = write_results(
        tmp_path / "r", {"trials": sweep[1]["trials"].drop(columns="layer_scores")}
    )
    rep = full_report(root)
    names = {f.name for f in rep.figures}
    assert "tradeoff_exit" not in names and "dev_per_epoch" not in names
    assert {"dev_vs_time", "hyperparameters"} <= names
    assert any("exits.parquet" in n for n in rep.notes)
    assert any("epochs.parquet" in n for n in rep.notes)
    md = write_report(rep, tmp_path / "out")[0].read_text()
    assert "## Notes" in md


# ----------------------------------------------------------------------------- files
def test_write_report_writes_markdown_html_and_pngs(tmp_path, report):
    paths = write_report(report, tmp_path)
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert paths[:2] == [tmp_path / "report.md", tmp_path / "report.html"]
    header = "| " + " | ".join(report.variant_table().columns) + " |"
    assert header in md
    for _, row in report.variant_table().iterrows():
        assert "| " + " | ".join(row.astype(str)) + " |" in md
        assert row["Best Trial"] in page
    assert {f.name for f in report.figures} == set(FIGURE_NAMES)
    linked_md = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    linked_html = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(linked_md) == sorted(linked_html) == sorted(f.filename for f in report.figures)
    for name in linked_html:
        image = imread(tmp_path / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_write_report_removes_figures_a_rerun_skipped(tmp_path, report):
    (tmp_path / "importance.png").write_bytes(b"old")
    rep = Report(
        **{**report.__dict__, "figures": [f for f in report.figures if f.name != "importance"]}
    )
    write_report(rep, tmp_path)
    assert not (tmp_path / "importance.png").exists()
    assert (tmp_path / "layerwise.png").exists()


PROBE = """<img src="missing.png" alt="probe"><script>
window.addEventListener("load", () => {
  const s = Array.from(document.images, i => (i.complete && i.naturalWidth > 0 ? "1" : "0")).join("");
  document.body.setAttribute("data-images", s);
});
</script></body>"""


def test_html_images_load_in_headless_chromium(tmp_path, report):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    write_report(report, tmp_path)
    page = tmp_path / "report.html"
    probe = tmp_path / "probe.html"  # a copy with a load-status probe and a broken image
    probe.write_text(page.read_text().replace("</body>", PROBE))
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
        "--dump-dom", probe.as_uri(),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    status = re.search(r'data-images="([01]*)"', out.stdout)
    assert status, f"no probe result; chromium stderr: {out.stderr[-2000:]}"
    loaded = status.group(1)
    assert len(loaded) == len(report.figures) + 1
    assert (
        loaded == "1" * len(report.figures) + "0"
    )  # every figure loads; the broken probe does not


# ----------------------------------------------------------------------------- CLI and paths
@pytest.mark.parametrize("case", ["no_dir", "no_trials", "corrupt", "not_results", "a_file"])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    path = tmp_path / "sweep"
    if case == "a_file":
        path.write_text("x")
    elif case != "no_dir":
        path.mkdir()
    if case == "corrupt":
        (path / "trials.parquet").write_bytes(b"PAR1 this is not parquet")
    if case == "not_results":
        pd.DataFrame({"x": [1]}).to_parquet(path / "trials.parquet")
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err


def test_report_script_prints_tables_and_writes_files(tmp_path, sweep):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "sweeps/report.py", str(sweep[0]), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Variants" in run.stdout and "Ablation" in run.stdout and REPEATED in run.stdout
    assert (out / "report.md").exists() and (out / "report.html").exists()
    bad = subprocess.run(
        [sys.executable, "sweeps/report.py", str(tmp_path / "nowhere")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_file_uri_reads_the_same_results_and_writes_next_to_them(tmp_path, sweep, report):
    root = write_results(tmp_path / "copy", sweep[1])
    rep = build_report(root.as_uri())
    assert rep.variant_table().equals(report.variant_table())
    assert main([root.as_uri(), "--quiet"]) == 0
    assert (root / "report.html").exists()


def test_object_store_uri_is_read_through_pyarrow_and_needs_out(
    tmp_path, monkeypatch, sweep, report, capsys
):
    import pyarrow.fs as pafs

    bucket = tmp_path / "bucket"
    write_results(bucket / "sweeps" / "paper", sweep[1])
    seen = []

    def fake_from_uri(uri):  # an s3 bucket backed by a local folder (not a LocalFileSystem)
        seen.append(uri)
        assert uri.startswith("s3://bucket/")
        return pafs.SubTreeFileSystem(str(bucket), pafs.LocalFileSystem()), uri[
            len("s3://bucket/") :
        ]

    monkeypatch.setattr(berter.sweep.store, "_from_uri", fake_from_uri)
    uri = "s3://bucket/sweeps/paper"
    rep = build_report(uri)
    assert rep.variant_table().equals(report.variant_table()) and rep.name == "paper"
    assert main([uri]) == 2
    assert "--out" in capsys.readouterr().err
    assert main([uri, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert (tmp_path / "out" / "report.html").exists()
    assert main(["s3://bucket/sweeps/missing", "--out", str(tmp_path / "o2")]) == 2
    assert "results directory not found: s3://bucket/sweeps/missing" in capsys.readouterr().err
    assert seen and all(u.startswith("s3://bucket/") for u in seen)
    with pytest.raises(DataError, match="not found"):
        read_results("s3://bucket/sweeps/missing", must_exist=True)


def test_the_report_reads_exactly_what_the_sweeps_reader_reads(tmp_path, monkeypatch, sweep):
    """One reader: results in an s3-style bucket give the report the very tables that
    read_results gives the sweep from their file:// URI, including a setting newer than the
    file (ema_decay) filled in at its Config default."""
    import pyarrow.fs as pafs

    bucket = tmp_path / "bucket"
    tables = {k: v.drop(columns="ema_decay", errors="ignore") for k, v in sweep[1].items()}
    root = write_results(bucket / "paper", tables)

    def fake_from_uri(uri):  # an s3 bucket backed by a local folder (not a LocalFileSystem)
        if not uri.startswith("s3://bucket/"):
            return pafs.FileSystem.from_uri(uri)
        return pafs.SubTreeFileSystem(str(bucket), pafs.LocalFileSystem()), uri.removeprefix(
            "s3://bucket/"
        )

    monkeypatch.setattr(berter.sweep.store, "_from_uri", fake_from_uri)
    by_store = read_results(root.as_uri())
    rep = build_report("s3://bucket/paper")
    assert (by_store["trials"]["ema_decay"] == Config().ema_decay).all()
    pd.testing.assert_frame_equal(rep.trials.drop(columns="label"), by_store["trials"])
    pd.testing.assert_frame_equal(rep.epochs, by_store["epochs"])
    pd.testing.assert_frame_equal(rep.exits, by_store["exits"])


def test_unknown_uri_scheme_is_a_data_error():
    with pytest.raises(DataError, match="cannot open results"):
        read_results("nosuchscheme://x/y")
