"""Tiny random-weight BERT backbones and configs for fast tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import BertConfig, BertModel

from berter.config import Config

if TYPE_CHECKING:
    from berter.train.run import TrainingRun

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cs224n"


def tiny_backbone(layers: int = 3, hidden: int = 32, seed: int = 0) -> BertModel:
    """A random BERT with the packaged tokenizer's vocabulary (30522 word pieces)."""
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    return BertModel(cfg, add_pooling_layer=False)


def tiny_config(**overrides) -> Config:
    """Demo data, a few examples per task, one short epoch."""
    values = dict(
        data_dir=None,
        max_train=24,
        max_dev=16,
        max_len=32,
        batch_size=8,
        epochs=1,
        lr=1e-3,
        dropout=0.1,
        calib_fraction=0.25,
        seed=0,
    )
    values.update(overrides)
    return Config(**values)


def straight_and_resumed(cfg: Config, directory: Path) -> tuple[TrainingRun, TrainingRun]:
    """A two-epoch run, and the same run checkpointed after its first epoch into
    ``directory`` and resumed in a fresh model with other weights: they should agree."""
    from berter.sweep.trainable import load_checkpoint, save_checkpoint
    from berter.train.run import TrainingRun

    straight = TrainingRun(cfg, backbone=tiny_backbone())
    straight.fit()
    first = TrainingRun(cfg, backbone=tiny_backbone())
    first.train_epoch()
    save_checkpoint(first, directory, {})
    resumed = TrainingRun(cfg, backbone=tiny_backbone(seed=5))
    load_checkpoint(resumed, directory)
    resumed.train_epoch()
    return straight, resumed
