"""Synthetic sweep results in the Parquet layout of ``berter.results``, for report tests.

One trial per BERTer Table 2 row (the ``--variants paper`` sweep), on a 6-layer backbone,
with values shaped like a small real sweep: task metrics near the paper's, a learning-rate
optimum near 5e-5, early-exit variants that save layers, per-epoch rows and exit curves.
``extra=True`` adds what a live sweep has besides: more trials of one variant, a trial that
ASHA stopped early, a running trial with a (too good) partial score, an error and a
divergence.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from berter.config import AXES, variant_name
from berter.variants import PAPER_PRESETS, PAPER_TABLE2

NUM_LAYERS = 6
TASK_COLUMNS = {"sst": "sst_acc", "para": "para_acc", "sts": "sts_corr"}
PEAK_LAYER = {"final": 6, "joint": 5, "alternating": 5, "smart_alt": 4}  # layer-wise optimum
REPEATED = "SLF + Smart Alt + Early Exit"  # the variant ``extra`` runs three times


def _dev(sst: float, para: float, sts: float) -> float:
    return (sst + para + (sts + 1.0) / 2.0) / 3.0


def _curve(final: float, peak: int, depth: float) -> list[float]:
    """Per-layer scores ending at ``final`` with a maximum at layer ``peak`` (1-based)."""
    top = final + depth * ((NUM_LAYERS - peak) / NUM_LAYERS) ** 2
    return [top - depth * ((k - peak) / NUM_LAYERS) ** 2 for k in range(1, NUM_LAYERS + 1)]


def _trial(
    rng: np.random.Generator, trial_id: str, preset: str, status: str = "terminated", **hp
) -> tuple[dict, list[dict], list[dict]]:
    axes = PAPER_PRESETS[preset]
    paper = PAPER_TABLE2[preset]
    lr = hp.get("lr", float(math.exp(rng.uniform(math.log(5e-6), math.log(2e-4)))))
    batch = hp.get("batch_size", int(rng.choice([8, 16, 32])))
    dropout = hp.get("dropout", float(rng.uniform(0.0, 0.5)))
    effect = (
        -0.05 * (math.log10(lr) - math.log10(5e-5)) ** 2
        - 0.08 * (dropout - 0.3) ** 2
        + (0.01 if batch == 16 else 0.0)
    )
    sst = float(np.clip(paper["sst_acc"] * 0.9 + effect + rng.normal(0, 0.01), 0.15, 0.6))
    para = float(np.clip(paper["para_acc"] * 0.95 + effect + rng.normal(0, 0.01), 0.3, 0.85))
    sts = float(np.clip(paper["sts_corr"] * 0.9 + 2 * effect + rng.normal(0, 0.02), -0.2, 0.9))
    peak = PEAK_LAYER[axes["strategy"]]
    layers = {
        "sst_acc": _curve(sst, peak, 0.10),
        "para_acc": _curve(para, peak, 0.08),
        "sts_corr": _curve(sts, peak, 0.30),
    }
    layer_scores = [_dev(*vals) for vals in zip(*layers.values(), strict=True)]
    dev = _dev(sst, para, sts)
    early = axes["exit_method"] != "none"
    finals = {"sst_acc": sst, "para_acc": para, "sts_corr": sts}
    # early exit: per task a threshold grid, exit layer rising and metric loss shrinking with it
    grid = np.linspace(0.3, 0.95, 8)
    exit_layers = [1.0 + (NUM_LAYERS - 1) * float(t) ** 1.5 for t in grid]
    curves = {
        c: [v - 0.02 * (NUM_LAYERS - a) ** 1.2 / NUM_LAYERS for a in exit_layers]
        for c, v in finals.items()
    }
    chosen = {t: int(rng.integers(4, 8)) if early else None for t in TASK_COLUMNS}
    point = {}  # per task: (exit layer, metric, threshold) at the trial's operating point
    for task, col in TASK_COLUMNS.items():
        k = chosen[task]
        point[task] = (
            (exit_layers[k], curves[col][k], float(grid[k]))
            if early
            else (float(NUM_LAYERS), finals[col], float("nan"))
        )
    avg_layer = float(np.mean([p[0] for p in point.values()]))
    dev_exit = _dev(*(p[1] for p in point.values()))
    seconds = paper["train_minutes"] * 60 * 0.08 * (16 / batch) ** 0.3 * rng.uniform(0.9, 1.1)

    epochs_planned = 3
    epochs_done = hp.get("epochs_done", epochs_planned)
    best_epoch = epochs_done if rng.uniform() < 0.7 else max(1, epochs_done - 1)
    metrics = {
        "dev_score": dev, "sst_acc": sst, "para_acc": para, "sts_corr": sts,
        "dev_score_exit": dev_exit, "avg_exit_layer": avg_layer,
        "layers_saved": 1.0 - avg_layer / NUM_LAYERS,
        "dev_score_mean_exits": float(np.mean(layer_scores)),
        "best_layer": int(np.argmax(layer_scores)) + 1, "num_layers": NUM_LAYERS,
        "layer_scores": layer_scores, **{f"{c}_layers": v for c, v in layers.items()},
        **{f"{c}_exit": point[t][1] for t, c in TASK_COLUMNS.items()},
        **{f"{t}_exit_layer": point[t][0] for t in TASK_COLUMNS},
        **{f"{t}_threshold": point[t][2] for t in TASK_COLUMNS},
    }  # fmt: skip
    if status == "diverged":
        metrics = {**metrics, **{k: float("nan") for k in ("dev_score", "dev_score_exit")}}
    if status == "error":
        metrics = {k: None for k in metrics}

    epoch_rows = []
    for e in range(1, epochs_done + 1):
        lag = 0.0 if e == best_epoch else 0.03 * abs(best_epoch - e) + 0.005
        row = {k: v for k, v in metrics.items()}
        for k in ("dev_score", "sst_acc", "para_acc", "sts_corr", "dev_score_exit"):
            if row[k] is not None:
                row[k] = row[k] - lag
        epoch_rows.append({
            "trial_id": trial_id, "variant": variant_name(axes), "epoch": e,
            "phase": "slf" if axes["slf"] == "on" and e == 1 else "train",
            "epoch_seconds": seconds / epochs_planned, "train_seconds": seconds * e / epochs_planned,
            "train_loss": 1.6 / e + float(rng.uniform(0, 0.05)), **row,
            "diverged": status == "diverged" and e == epochs_done,
        })  # fmt: skip

    exit_rows = []
    if status in ("terminated", "stopped-early", "running"):
        for task, col in TASK_COLUMNS.items():
            if early:
                for t, avg, metric in zip(grid, exit_layers, curves[col], strict=True):
                    exit_rows.append({
                        "trial_id": trial_id, "variant": variant_name(axes), "epoch": best_epoch,
                        "task": task, "exit_method": axes["exit_method"], "threshold": float(t),
                        "metric": metric, "avg_exit_layer": avg,
                    })  # fmt: skip
            else:
                for k, value in enumerate(layers[col], start=1):
                    exit_rows.append({
                        "trial_id": trial_id, "variant": variant_name(axes), "epoch": best_epoch,
                        "task": task, "exit_method": "none", "threshold": float(k),
                        "metric": value, "avg_exit_layer": float(k),
                    })  # fmt: skip

    trial = {
        "trial_id": trial_id, "trial_name": f"train_{trial_id}", "status": status,
        "error": "RuntimeError: CUDA out of memory" if status == "error" else None,
        "variant": variant_name(axes), "preset": preset, **{a: axes[a] for a in AXES},
        "lr": lr, "batch_size": batch, "dropout": dropout, "epochs": epochs_planned,
        "optimizer": "adamw", "weight_decay": 0.01, "warmup_ratio": 0.1,
        "smart_lambda": 1.0, "smart_step": 1e-3, "lte_lr": 1e-4, "lambda_lr": 1e-4, "patience": 2,
        **metrics,
        "speedup_wall": (0.9 * NUM_LAYERS / avg_layer if early else 1.0) if status != "error" else None,
        "train_seconds": seconds * epochs_done / epochs_planned,
        "epochs_done": epochs_done, "epochs_planned": epochs_planned,
        "best_epoch": best_epoch if status != "error" else None,
        "model": "packaged", "seed": 0, "data_source": "cs224n", "sweep": "paper",
        "started_at": pd.Timestamp("2025-01-01T00:00:00Z") + pd.Timedelta(minutes=int(trial_id[1:])),
    }  # fmt: skip
    return trial, epoch_rows, exit_rows


def synthetic_results(seed: int = 0, extra: bool = False) -> dict[str, pd.DataFrame]:
    """The three tables of a 12-trial ``--variants paper`` sweep (+ live-sweep extras)."""
    rng = np.random.default_rng(seed)
    specs: list[tuple[str, str, dict]] = [(name, "terminated", {}) for name in PAPER_PRESETS]
    if extra:
        specs += [
            (REPEATED, "terminated", {"lr": 5e-5, "batch_size": 16, "dropout": 0.3}),
            (REPEATED, "terminated", {"lr": 6e-6, "batch_size": 8, "dropout": 0.05}),
            ("Baseline", "stopped-early", {"epochs_done": 1}),
            ("Baseline", "running", {"epochs_done": 2}),
            ("SLF", "error", {}),
            ("Full SMART", "diverged", {}),
        ]
    trials, epochs, exits = [], [], []
    for i, (preset, status, hp) in enumerate(specs):
        t, e, x = _trial(rng, f"t{i:03d}", preset, status, **hp)
        trials.append(t)
        epochs += e
        exits += x
    tables = {
        "trials": pd.DataFrame(trials),
        "epochs": pd.DataFrame(epochs),
        "exits": pd.DataFrame(exits),
    }
    if extra:  # the running trial's partial score beats everything; reports must ignore it
        running = tables["trials"]["status"] == "running"
        tables["trials"].loc[running, "dev_score"] = 0.99
    return tables


def write_results(root: Path | str, tables: dict[str, pd.DataFrame]) -> Path:
    """Write ``tables`` as ``<root>/{trials,epochs,exits}.parquet``; returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for key, df in tables.items():
        df.to_parquet(root / f"{key}.parquet", index=False)
    return root
