"""berter.sweep.run: the command line's options as keywords, the same plan, the three tables."""

import subprocess
import sys

import pandas as pd
import pytest
import ray

import berter.sweep
from berter.errors import ConfigError
from berter.sweep.api import options_namespace
from berter.sweep.cli import build_parser
from berter.sweep.cli import main as sweep_main
from berter.sweep.store import read_results


def options(tiny_model: str, results, name: str, **extra) -> dict:
    """A tiny demo sweep's options, as keywords (tests/test_sweep_cli.py's as flags)."""
    return dict(data="demo", model=tiny_model, max_train=24, max_dev=16, max_len=32,
                results=str(results), name=name, **extra)  # fmt: skip


def argv(tiny_model: str, results, name: str, *extra: str) -> list[str]:
    return ["--data", "demo", "--model", tiny_model, "--max-train", "24", "--max-dev", "16",
            "--max-len", "32", "--results", str(results), "--name", name, *extra]  # fmt: skip


def test_a_tiny_sweep_returns_the_three_tables_of_its_results_directory(tiny_model, tmp_path):
    assert not ray.is_initialized()
    tables = berter.sweep.run(
        **options(tiny_model, tmp_path, "api", search="lr", num_samples=1, epochs=1,
                  scheduler="fifo", max_concurrent=1, cpus_per_trial=1)
    )  # fmt: skip
    assert set(tables) == {"trials", "epochs", "exits"}
    assert len(tables["trials"]) == 1 and set(tables["trials"].status) == {"terminated"}
    stored = read_results(tmp_path / "api")
    for key in ("trials", "epochs", "exits"):
        assert len(tables[key]) > 0
        pd.testing.assert_frame_equal(tables[key], stored[key])
    assert not ray.is_initialized()  # the Ray instance the call started is stopped


def test_an_unknown_keyword_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="unknown sweep option 'max_trian'") as caught:
        berter.sweep.run(data="demo", max_trian=24, results=str(tmp_path), dry_run=True)
    assert "did you mean 'max_train'?" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_value_is_the_command_lines_one_line_error(tmp_path, capsys):
    """The parser's own checks: a choice, an int, the data exclusion, a flag's type."""
    for bad, message in [
        (dict(data="real"), "invalid choice: 'real'"),
        (dict(num_samples=2.5), "invalid int value: '2.5'"),
        (dict(data="demo", data_dir="d"), "not allowed with argument"),
        (dict(dry_run="yes"), "dry_run takes True or False"),
        (dict(set="lr=2e-5", search="lr"), "--set lr conflicts with --search lr"),
    ]:
        with pytest.raises(ConfigError) as caught:
            berter.sweep.run(**{"results": str(tmp_path), "dry_run": True, **bad})
        assert message in str(caught.value) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_prints_the_same_error_and_exits_2(tmp_path, capsys):
    assert sweep_main(["--data", "real", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    with pytest.raises(ConfigError) as caught:
        berter.sweep.run(data="real", results=str(tmp_path))
    assert err == f"error: {caught.value}\n"


def test_keywords_parse_as_the_same_flags_would(tiny_model, tmp_path):
    from_keywords = options_namespace(
        **options(tiny_model, tmp_path, "same", search=["lr", "dropout"], variants="paper",
                  set=["batch=16", "dropout=0.1"], range=["lr=1e-5:1e-3"], seeds=2,
                  objective="dev_score,avg_exit_layer", dry_run=True, resume=False)
    )  # fmt: skip
    from_flags = build_parser().parse_args(
        argv(tiny_model, tmp_path, "same", "--search", "lr,dropout", "--variants", "paper",
             "--set", "batch=16", "--set", "dropout=0.1", "--range", "lr=1e-5:1e-3",
             "--seeds", "2", "--objective", "dev_score,avg_exit_layer", "--dry-run")
    )  # fmt: skip
    assert from_keywords == from_flags
    # no keywords: the parser's own defaults
    assert options_namespace() == build_parser().parse_args([])


def test_dry_run_returns_the_command_lines_plan_and_writes_nothing(tiny_model, tmp_path, capsys):
    results = tmp_path / "results"
    plan = berter.sweep.run(
        **options(tiny_model, results, "planned", search="lr,dropout", variants="paper",
                  num_samples=12, dry_run=True)
    )  # fmt: skip
    from_api = capsys.readouterr().out
    assert not ray.is_initialized()
    assert list(tmp_path.iterdir()) == []  # not even the results directory
    assert plan.num_samples == 12 and len(plan.variants) == 12
    assert [p["name"] for p in plan.params] == ["lr", "dropout"]
    assert from_api.startswith("dry run of sweep planned (nothing started, nothing written)")
    assert sweep_main(
        argv(tiny_model, results, "planned", "--search", "lr,dropout", "--variants", "paper",
             "--num-samples", "12", "--dry-run")
    ) == 0  # fmt: skip
    assert capsys.readouterr().out == from_api


def test_importing_berter_sweep_imports_neither_ray_nor_torch():
    code = ("import sys, berter.sweep; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'pandas'}))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
