"""benchmarks/siamese_blend.py: the threshold and blend it fits, and a run on a tiny checkpoint."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import siamese_blend  # noqa: E402

from berter.tasks import get_task  # noqa: E402


def brute_force_best_accuracy(score: np.ndarray, gold: np.ndarray) -> float:
    cuts = np.concatenate([[score.min() - 1], score])
    return max(((score > c) == (gold > 0.5)).mean() for c in cuts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_threshold_is_as_accurate_as_any_cut_even_with_tied_scores(seed):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 6, size=200) / 5.0  # many ties
    gold = (score + rng.normal(0, 0.4, size=200) > 0.5).astype(float)
    cut = siamese_blend.best_threshold(score, gold)
    assert ((score > cut) == (gold > 0.5)).mean() == pytest.approx(
        brute_force_best_accuracy(score, gold)
    )


def test_best_threshold_cuts_between_the_classes():
    cut = siamese_blend.best_threshold(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1.0]))
    assert 0.2 < cut < 0.3


def test_two_independent_noisy_signals_blend_better_than_either():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=2000)
    cross, cos = gold + rng.normal(size=2000), 0.1 * (gold + rng.normal(size=2000)) + 3
    task = get_task("sts")
    w, _, blended = siamese_blend.fit_blend(task, cross, cos, gold)
    alone = max(np.corrcoef(cross, gold)[0, 1], np.corrcoef(cos, gold)[0, 1])
    assert 0.3 <= w <= 0.7  # equal noise, whatever each signal's scale
    assert blended > alone + 0.05


def test_a_signal_of_pure_noise_gets_no_weight_for_paraphrase():
    rng = np.random.default_rng(1)
    gold = (rng.random(2000) < 0.4).astype(float)
    cross, noise = gold * 2 + rng.normal(size=2000), rng.normal(size=2000)
    task = get_task("para")
    w, th, acc = siamese_blend.fit_blend(task, cross, noise, gold)
    assert w <= 0.1
    assert acc == pytest.approx(siamese_blend.metric(task, (1 - w) * siamese_blend.standardise(
        cross, cross) + w * siamese_blend.standardise(noise, noise), gold, th))  # fmt: skip


@pytest.mark.parametrize("concat", ["before_embed", "after_embed"])
def test_blend_on_a_tiny_checkpoint_prints_a_table_and_a_headline(
    tmp_path, tiny_model, capsys, concat
):
    from tiny import tiny_config

    from berter.checkpoint import save_model
    from berter.train.run import TrainingRun

    run = TrainingRun(tiny_config(model=tiny_model, concat=concat))
    run.fit()
    save_model(run, tmp_path / "ckpt", {"sst": None, "para": None, "sts": None})
    assert siamese_blend.main(["--checkpoint", str(tmp_path / "ckpt")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:5]] == [
        "para (accuracy)", "sts (pearson)", "dev score",
    ]  # fmt: skip
    cross, blend = (float(x) for x in lines[-1].split(": ")[1].split(" (")[0].split(" -> "))
    assert cross == pytest.approx(run.evaluate("dev").dev_score, abs=1e-4)
    assert lines[-1].startswith("dev score, cross -> blend (calibration-chosen): ")


def test_checkpoint_without_a_pair_task_is_a_one_line_error(tmp_path, tiny_model, capsys):
    from tiny import tiny_config

    from berter.checkpoint import save_model
    from berter.train.run import TrainingRun

    run = TrainingRun(tiny_config(model=tiny_model, tasks=("sst",)))
    save_model(run, tmp_path / "ckpt", {"sst": None})
    assert siamese_blend.main(["--checkpoint", str(tmp_path / "ckpt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'ckpt'}: the model has no pair task to blend"
    )


def test_checkpoint_without_a_calibration_slice_is_a_one_line_error(tmp_path, tiny_model, capsys):
    from tiny import tiny_config

    from berter.checkpoint import save_model
    from berter.train.run import TrainingRun

    run = TrainingRun(tiny_config(model=tiny_model, calib_fraction=0.0))
    save_model(run, tmp_path / "ckpt", {"sst": None, "para": None, "sts": None})
    assert siamese_blend.main(["--checkpoint", str(tmp_path / "ckpt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'ckpt'}: its run held out no calibration slice to choose the blend on"
    )


def test_quick_measures_200_dev_examples_per_task_unless_told(monkeypatch, capsys):
    seen = []
    scores = {"cross": 0.7, "blend": 0.71, "oracle": 0.72}
    monkeypatch.setattr(
        siamese_blend, "measure", lambda args: seen.append(args.max_dev) or ([], scores)
    )
    assert siamese_blend.main(["--checkpoint", "x", "--quick"]) == 0
    assert siamese_blend.main(["--checkpoint", "x", "--quick", "--max-dev", "50"]) == 0
    assert siamese_blend.main(["--checkpoint", "x"]) == 0
    assert seen == [200, 50, None]


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert siamese_blend.main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'nope'}: checkpoint directory does not exist"
    )
