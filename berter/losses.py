"""Task losses of one exit: cross-entropy (SST), BCE with logits (paraphrase), MSE (STS).

Siamese pair exits (cos_loss=on) output a cosine instead of a logit: paraphrase uses
``torch.nn.CosineEmbeddingLoss`` on the two sentence embeddings with targets +1/-1, and
STS regresses ``5 * cosine`` on the gold score with MSE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from berter.data import Task

if TYPE_CHECKING:
    from berter.model import ExitOutput


def task_loss(
    task: Task, out: ExitOutput, labels: torch.Tensor, cos_margin: float = 0.0
) -> torch.Tensor:
    """Mean loss of one exit on one batch."""
    logits = out.logits.float()
    if out.pair is not None:  # siamese
        if task.is_regression:
            return F.mse_loss(5.0 * logits, labels.float())
        u, v = out.pair
        target = labels.float() * 2 - 1
        return F.cosine_embedding_loss(u.float(), v.float(), target, margin=cos_margin)
    if task.is_regression:
        return F.mse_loss(logits, labels.float())
    if logits.dim() == 1:  # binary: one logit
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits, labels.long())


def per_example_loss(
    task: Task, out: ExitOutput, labels: torch.Tensor, cos_margin: float = 0.0
) -> torch.Tensor:
    """Unreduced version of :func:`task_loss`, shape [B] (used by Q-exit and LTE targets)."""
    logits = out.logits.float()
    if out.pair is not None:
        if task.is_regression:
            return (5.0 * logits - labels.float()) ** 2
        u, v = out.pair
        target = labels.float() * 2 - 1
        return F.cosine_embedding_loss(
            u.float(), v.float(), target, margin=cos_margin, reduction="none"
        )
    if task.is_regression:
        return (logits - labels.float()) ** 2
    if logits.dim() == 1:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    return F.cross_entropy(logits, labels.long(), reduction="none")
