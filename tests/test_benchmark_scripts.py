"""The benchmark scripts' shared contract: every one takes ``--quick`` and ends with its
headline (strategies, gpu); a bad input (missing data, a bad count or rate, no accelerate, no
CUDA) is one line on stderr and exit 2, never a traceback or minutes of work first."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import strategies  # noqa: E402
import table2  # noqa: E402

from berter.results import read_results  # noqa: E402


def test_there_are_benchmark_scripts_to_check():
    assert len(SCRIPTS) >= 8


def options(script: Path) -> set[str]:
    """The option strings a script's argparse parser is given (read from its source: running
    ``--help`` would import torch once per script)."""
    found = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant)}
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_script_takes_quick(script):
    assert "--quick" in options(script)


def row(label: str, final_layer: float, mean_exits: float) -> dict:
    return {"label": label, "dev_score": final_layer, "dev_score_mean_exits": mean_exits}


def test_strategies_headline_names_the_best_mean_over_exits_and_its_cost_against_final():
    rows = [row("final", 0.57, 0.40), row("joint", 0.54, 0.53), row("slf+joint", 0.557, 0.545)]
    line = strategies.headline(rows)
    assert line.startswith("best mean over exits: slf+joint 0.5450 (final layer 0.5570)")
    assert line.endswith("final-layer score slf+joint/final: 0.977")


def test_strategies_headline_without_a_final_row_gives_no_ratio():
    line = strategies.headline([row("joint", 0.54, 0.53), row("alternating", 0.55, 0.51)])
    assert line == "best mean over exits: joint 0.5300 (final layer 0.5400)"


def test_throughput_without_accelerate_stops_before_timing_with_one_line(monkeypatch, capsys):
    import throughput
    from transformers.utils import import_utils

    monkeypatch.setattr(import_utils, "is_accelerate_available", lambda *a, **k: False)
    monkeypatch.setattr(throughput, "overhead", lambda *a: pytest.fail("timed before the check"))
    assert throughput.main(["--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the Trainer comparison needs accelerate>=") and "\n" not in err


def test_throughput_profile_runs_only_the_named_side_of_the_trainer_comparison(monkeypatch, capsys):
    import throughput

    seen = {}

    def vs_trainer(args, log):
        seen["profile"] = args.profile
        return {args.profile: 12.5}

    monkeypatch.setattr(throughput, "vs_trainer", vs_trainer)
    monkeypatch.setattr(throughput, "trainer_missing", lambda: None)  # with or without accelerate
    monkeypatch.setattr(throughput, "overhead", lambda *a: pytest.fail("ran another comparison"))
    assert throughput.main(["--quick", "--profile", "Trainer tuned"]) == 0
    assert seen == {"profile": "Trainer tuned"}
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "Trainer tuned alone: median 12.50 CPU s per epoch"


def test_gpu_benchmark_without_cuda_says_so_in_one_line(capsys):
    import gpu
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu.main(["--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no CUDA device here") and "\n" not in err


def test_gpu_benchmark_rejects_an_unknown_mode_in_one_line(capsys):
    import gpu

    assert gpu.main(["--device", "cpu", "--modes", "fp32,fp8"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown model or mode fp8"


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="shared CS224N data not present")
def test_gpu_benchmark_runs_end_to_end_on_cpu_and_ends_with_its_headline(capsys):
    """The script a lent GPU would run first: its table and last line, as a CPU smoke run."""
    import gpu

    argv = ["--device", "cpu", "--data-dir", str(SHARED_DATA), "--examples", "48"]
    assert (
        gpu.main([*argv, "--batch-size", "16", "--models", "packaged", "--modes", "fp32,amp"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in lines if line.startswith("| packaged |")]
    assert [r.split("|")[2].strip() for r in rows] == ["fp32", "amp"]
    assert lines[-1].startswith("examples/s ratio amp/fp32 (packaged backbone): ")
    assert float(lines[-1].rsplit(" ", 1)[1]) > 0


def test_gpu_benchmark_counts_the_sync_warnings_of_one_epoch_and_restores_the_mode(monkeypatch):
    """The CUDA-only sync count, with torch's debug mode and a run faked: it counts the
    "synchronizing" warnings the epoch raises (others not), and puts the mode back."""
    import warnings
    from types import SimpleNamespace

    import gpu
    import torch

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def epoch():
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)

    run = SimpleNamespace(
        device=torch.device("cuda"), epoch=1, epoch_batches=lambda e: [0] * 7, train_epoch=epoch
    )
    assert gpu.host_syncs(run) == (3, 7)
    assert modes == ["warn", "default"]
    assert gpu.host_syncs(SimpleNamespace(device=torch.device("cpu"))) is None


MISSING = "/nonexistent/cs224n"
MISSING_LINE = f"error: {MISSING}: data directory does not exist"


@pytest.mark.parametrize("name", ["strategies", "throughput", "search_efficiency", "gpu"])
def test_a_missing_data_directory_is_one_line_and_exit_2_in_process(name, capsys, tmp_path):
    import importlib

    script = importlib.import_module(name)
    extra = {
        "search_efficiency": ["--table", str(tmp_path / "grid.json")],
        "gpu": ["--device", "cpu"],
        "throughput": ["--only", "exits"],  # the Trainer part would first ask for accelerate
    }
    extra = extra.get(name, [])
    assert script.main(["--quick", "--data-dir", MISSING, *extra]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith(MISSING_LINE)
    assert "Traceback" not in err


def test_freed_memory_relays_its_childs_missing_data_error_as_one_line():
    """The work runs in child processes whose output is captured: a real command line shows
    that the child's one-line error reaches the user, and nothing more."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "freed_memory.py"),
            "--quick",
            "--data-dir",
            MISSING,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().startswith(MISSING_LINE) and len(out.stderr.strip().splitlines()) == 1


def test_freed_memory_rejects_more_configurations_than_it_has_in_one_line(monkeypatch, capsys):
    import freed_memory

    monkeypatch.setattr(sys, "argv", ["freed_memory.py", "--configs", "4"])
    monkeypatch.setattr(freed_memory.subprocess, "run", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exit_:
        freed_memory.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: --configs: at most 3, got 4\n"


def test_trial_thread_checks_the_data_before_starting_ray(monkeypatch, capsys):
    import trial_thread

    monkeypatch.setattr(sys, "argv", ["trial_thread.py", "--quick", "--data-dir", MISSING])
    monkeypatch.setitem(sys.modules, "ray", None)  # importing Ray would fail the test
    assert trial_thread.main() == 2
    assert capsys.readouterr().err.startswith(MISSING_LINE)


def test_sweep_overhead_exits_with_the_sweeps_status_and_no_traceback(monkeypatch, capsys):
    """sweeps/run.py prints its own one-line error on the terminal (its stderr is not
    captured); the benchmark adds nothing to it and exits with its status."""
    import sweep_overhead

    def failed_sweep(cmd, **kwargs):
        raise subprocess.CalledProcessError(2, cmd)

    monkeypatch.setattr(sweep_overhead.subprocess, "run", failed_sweep)
    monkeypatch.setattr(sys, "argv", ["sweep_overhead.py", "--quick", "--data-dir", MISSING])
    assert sweep_overhead.main() == 2
    assert capsys.readouterr().err == ""


def test_one_line_errors_turns_a_user_error_into_exit_2_and_lets_a_bug_through(capsys):
    from berter.errors import DataError, one_line_errors

    @one_line_errors
    def bad_input() -> int:
        raise DataError("x.csv: no such file")

    @one_line_errors
    def bug() -> int:
        raise ZeroDivisionError

    assert bad_input() == 2
    assert capsys.readouterr().err == "error: x.csv: no such file\n"
    with pytest.raises(ZeroDivisionError):
        bug()


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("strategies", ["--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
        ("search_efficiency", ["--seeds", "-1"], "argument --seeds: expected an integer >= 1, got '-1'"),
        ("search_efficiency", ["--tolerance", "-0.1"], "argument --tolerance: expected a number >= 0, got '-0.1'"),
        ("search_efficiency", ["--reduction-factor", "1"], "--reduction-factor must be > 1, got 1.0"),
        ("search_efficiency", ["--cap", "inf"], "argument --cap: expected a number > 0, got 'inf'"),
        ("search_efficiency", ["--threads", "0"], "argument --threads: expected an integer >= 1, got '0'"),
        ("throughput", ["--threads", "0"], "argument --threads: expected an integer >= 1, got '0'"),
        ("gpu", ["--examples", "two"], "argument --examples: expected an integer >= 1, got 'two'"),
        ("early_exit", ["--lr", "nan"], "argument --lr: expected a number > 0, got 'nan'"),
        ("accuracy", ["--quick", "--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    ],
)  # fmt: skip
def test_a_bad_count_or_rate_is_one_line_and_exit_2_before_any_work(name, argv, message, capsys):
    """0 would otherwise be read as "the default" (``args.n or default``), and a negative count
    or tolerance fails late with a traceback, if at all."""
    import importlib

    script = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_:
        script.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data/cs224n")
def test_table2_quick_runs_all_twelve_presets_with_seeds_and_judges_every_claim(tmp_path):
    """``table2.py --quick`` as a user runs it: the real sweep on a slice of the real data, the
    per-preset table, its headline last, and REPRODUCTION.md's claim verdicts from its results."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "table2.py"), "--quick",
         "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("table2: 12/12 presets, 2-2 seeds; best ")
    rows = table2.claim_rows(read_results(tmp_path / "table2-quick")["trials"])
    overall = [r["overall"] for r in rows if r["claim"]]
    assert len(overall) == len(table2.CLAIMS) and "not run" not in overall
    assert all(r["verdict"] != "not run" for r in rows if r["pair"].count(" - ") == 1)
