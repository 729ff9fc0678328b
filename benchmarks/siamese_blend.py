"""How much the backbone's own sentence embeddings add to a trained model's pair scores.

The packaged backbone (all-MiniLM-L6-v2) was trained as a mean-pooled sentence encoder,
so the cosine of its two sentence embeddings, with no fine-tuning at all, already ranks
STS pairs and separates Quora duplicates. This measures, on a trained checkpoint:

- ``cross``: the checkpoint's final-layer score per pair task (as its sweep reported it);
- ``siamese``: the untouched backbone's cosine of the two sentences' mean-pooled
  embeddings (for paraphrase, thresholded where it is most accurate on the calibration
  slice);
- ``blend``: a weighted sum of the two, standardised on the calibration slice, the weight
  (and, for paraphrase, the threshold) chosen there too, then scored on dev;
- ``dev oracle``: the same with weight and threshold chosen on dev itself, an optimistic
  bound on what any combination of the two signals gives.

The blend runs two encoders (the fine-tuned one and the untouched one), so it is not a
one-model result; it estimates how far a pair head that also read siamese features could
move the dev score (the formula inferred from the paper's Table 2, SST unchanged).

    python benchmarks/siamese_blend.py --checkpoint DIR [--data-dir DIR] [--max-dev N] [--quick]

The calibration slice is the one the checkpoint's run held out (the same seed and data).

Last line: ``dev score, cross -> blend (calibration-chosen): A -> B (+D)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from berter.checkpoint import run_from_checkpoint  # noqa: E402
from berter.errors import ArgumentParser, ConfigError, one_line_errors, positive_int  # noqa: E402
from berter.metrics import dev_score, task_metric  # noqa: E402
from berter.tasks import Task  # noqa: E402
from berter.train.evaluate import Evaluation  # noqa: E402
from berter.train.run import TrainingRun  # noqa: E402

WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)


def standardise(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``x`` on the scale of ``ref`` (mean 0, std 1 there): the blend's weights then mean the
    same for a logit, a regression score and a cosine."""
    return (x - ref.mean()) / max(float(ref.std()), 1e-12)


def best_threshold(score: np.ndarray, gold: np.ndarray) -> float:
    """The cut on ``score`` (predict 1 above it) that is most accurate on (score, gold); the
    candidates lie between distinct scores, so ties never straddle a cut."""
    order = np.argsort(score, kind="stable")
    s, positive = score[order], gold[order] > 0.5
    u = np.unique(s)
    cuts = np.concatenate([[u[0] - 1.0], (u[1:] + u[:-1]) / 2, [u[-1] + 1.0]])
    below = np.searchsorted(s, cuts, side="right")  # examples predicted 0 at each cut
    pos_below = np.concatenate([[0], np.cumsum(positive)])[below]
    correct = (below - pos_below) + (positive.sum() - pos_below)
    return float(cuts[int(np.argmax(correct))])


def metric(task: Task, score: np.ndarray, gold: np.ndarray, threshold: float) -> float:
    """The task's dev metric of a blended score (Pearson is indifferent to the threshold)."""
    if task.metric == "pearson":
        return task_metric(task, score, gold)
    return task_metric(task, (score > threshold).astype(np.int64), gold)


def fit_blend(
    task: Task, cross: np.ndarray, cos: np.ndarray, gold: np.ndarray
) -> tuple[float, float, float]:
    """(weight of the siamese cosine, threshold, metric) that score best on the given data,
    with both signals standardised on it. The lowest weight wins a tie."""
    zc, zs = standardise(cross, cross), standardise(cos, cos)
    best = (0.0, 0.0, -np.inf)
    for w in WEIGHTS:
        s = (1 - w) * zc + w * zs
        th = best_threshold(s, gold) if task.metric != "pearson" else 0.0
        m = metric(task, s, gold, th)
        if m > best[2] + 1e-12:
            best = (float(w), th, m)
    return best


def blend_on(
    task: Task,
    w: float,
    th: float,
    cross: np.ndarray,
    cos: np.ndarray,
    ref: tuple,
    gold: np.ndarray,
) -> float:
    """Score a blend chosen elsewhere: standardised with the statistics of ``ref``."""
    ref_cross, ref_cos = ref
    s = (1 - w) * standardise(cross, ref_cross) + w * standardise(cos, ref_cos)
    return metric(task, s, gold, th)


def final_scores(ev: Evaluation, name: str) -> tuple[np.ndarray, np.ndarray]:
    t = ev.tasks[name]
    return t.logits[-1].numpy().astype(np.float64), t.labels


def load_runs(args: argparse.Namespace) -> tuple[TrainingRun, TrainingRun]:
    """The trained model, and the untouched backbone as a siamese encoder on the same data."""
    changes: dict = {}
    if args.data_dir is not None:
        changes["data_dir"] = str(args.data_dir)
    if args.max_dev is not None:
        changes["max_dev"] = args.max_dev
    trained = run_from_checkpoint(args.checkpoint, **changes)
    cfg = trained.cfg
    pairs = [t.name for t in trained.tasks if t.is_pair]
    if not pairs:
        raise ConfigError(f"{args.checkpoint}: the model has no pair task to blend")
    if any(not trained.encoded[name]["calib"].labels for name in pairs):
        raise ConfigError(
            f"{args.checkpoint}: its run held out no calibration slice to choose the blend on"
        )
    plain = dict(
        smart="off", slf="off", strategy="final", exit_method="none", ema_decay=0.0, pair_swap=False
    )
    siamese_cfg = dataclasses.replace(
        cfg, cos_loss="on", concat="after_embed", tasks=type(cfg.tasks)(pairs), **plain
    )
    siamese = TrainingRun(siamese_cfg, data=trained.data)
    return trained, siamese


def measure(args: argparse.Namespace) -> tuple[list[dict], dict[str, float]]:
    trained, siamese = load_runs(args)
    evals = {
        split: (trained.evaluate(split), siamese.evaluate(split)) for split in ("calib", "dev")
    }
    dev = evals["dev"][0]
    rows, blended, oracle = [], {}, {}
    for task in siamese.tasks:
        name = task.name
        (c_cross, gold_c), (c_cos, _) = (final_scores(e, name) for e in evals["calib"])
        (d_cross, gold_d), (d_cos, _) = (final_scores(e, name) for e in evals["dev"])
        if task.metric != "pearson":  # the cosine alone, cut where it is best on calib
            cos_alone = metric(task, d_cos, gold_d, best_threshold(c_cos, gold_c))
        else:
            cos_alone = metric(task, d_cos, gold_d, 0.0)
        w, th, _ = fit_blend(task, c_cross, c_cos, gold_c)
        blended[name] = blend_on(task, w, th, d_cross, d_cos, (c_cross, c_cos), gold_d)
        ow, _, oracle[name] = fit_blend(task, d_cross, d_cos, gold_d)
        rows.append({
            "task": name, "metric": task.metric, "cross": dev.tasks[name].metrics[-1],
            "siamese": cos_alone, "weight": w, "blend": blended[name],
            "oracle_weight": ow, "oracle": oracle[name], "dev_n": len(gold_d),
            "calib_n": len(gold_c),
        })  # fmt: skip
    cross = {n: t.metrics[-1] for n, t in dev.tasks.items()}
    scores = {
        "cross": dev_score(cross, dev.task_defs),
        "blend": dev_score({**cross, **blended}, dev.task_defs),
        "oracle": dev_score({**cross, **oracle}, dev.task_defs),
    }
    return rows, scores


def markdown(rows: list[dict], scores: dict[str, float]) -> str:
    lines = [
        "| task (metric) | cross (final layer) | siamese, untouched | blend weight | blend "
        "| dev-oracle weight | dev oracle | dev / calib examples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} ({r['metric']}) | {r['cross']:.4f} | {r['siamese']:.4f} | "
            f"{r['weight']:.2f} | {r['blend']:.4f} | {r['oracle_weight']:.2f} | "
            f"{r['oracle']:.4f} | {r['dev_n']:,} / {r['calib_n']:,} |"
        )
    lines.append(
        f"| dev score | {scores['cross']:.4f} | | | {scores['blend']:.4f} | | "
        f"{scores['oracle']:.4f} | |"
    )
    return "\n".join(lines)


def headline(scores: dict[str, float]) -> str:
    gain = scores["blend"] - scores["cross"]
    return (
        f"dev score, cross -> blend (calibration-chosen): {scores['cross']:.4f} -> "
        f"{scores['blend']:.4f} ({gain:+.4f})"
    )


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a trained checkpoint directory")
    parser.add_argument("--data-dir", help="the data (default: where the model was trained)")
    parser.add_argument("--max-dev", type=positive_int, default=None, help="dev examples per task")
    parser.add_argument("--quick", action="store_true", help="200 dev examples per task")
    args = parser.parse_args(argv)
    if args.quick and args.max_dev is None:
        args.max_dev = 200
    rows, scores = measure(args)
    print(markdown(rows, scores))
    print(headline(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
