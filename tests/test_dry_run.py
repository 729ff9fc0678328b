"""``--dry-run``: the resolved plan on stdout, exit 0, no Ray started and nothing written."""

import ray

from berter.sweep.cli import main as sweep_main


def test_dry_run_prints_the_plan_without_starting_ray_or_writing(tiny_model, tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["--data", "demo", "--model", tiny_model, "--max-train", "24", "--max-dev", "16",
            "--search", "lr,dropout", "--variants", "paper", "--num-samples", "12",
            "--results", str(results), "--name", "planned", "--dry-run"]  # fmt: skip
    assert sweep_main(argv) == 0
    out = capsys.readouterr().out
    assert not ray.is_initialized()
    assert list(tmp_path.iterdir()) == []  # not even the results directory
    assert "dry run of sweep planned (nothing started, nothing written)" in out
    assert "trials: 12," in out and "variants (12):" in out and "Baseline:" in out
    assert "  lr: log-uniform [" in out and "  dropout: " in out
    # data sizes from the loaded data: --max-train 24 less the calibration slice, --max-dev 16
    assert all(f"  {t}: 22 / 16 / 2" in out for t in ("sst", "para", "sts"))
