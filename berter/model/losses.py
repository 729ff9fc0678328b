"""Task losses of one exit: cross-entropy (SST), BCE with logits (paraphrase), MSE (STS).

Siamese pair exits (cos_loss=on) output a cosine instead of a logit: paraphrase uses
``torch.nn.CosineEmbeddingLoss`` on the two sentence embeddings with targets +1/-1, and
STS regresses ``5 * cosine`` on the gold score with MSE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from berter.tasks import Task

if TYPE_CHECKING:
    from berter.model.multi_exit import ExitOutput


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


def distill_loss(
    task: Task, student: ExitOutput, teacher: ExitOutput, temperature: float = 1.0
) -> torch.Tensor:
    """Self-distillation: one exit matches another's (detached) prediction.

    Classification: KL(teacher || student) of the softmax at ``temperature``, times T^2 so
    that the gradient's scale does not depend on T (Hinton et al., 2015); a binary exit's
    one logit is the two classes [0, logit]. Regression and siamese (cosine) exits: MSE
    between the two outputs. Early exits that agree with the last layer can stop sooner
    at the same score (FastBERT's self-distillation).
    """
    s = student.logits.float()
    t = teacher.logits.detach().float()
    if task.is_regression or student.pair is not None:
        return F.mse_loss(s, t)
    if s.dim() == 1:  # binary: the logit of class 1 against a fixed 0 for class 0
        s = torch.stack([torch.zeros_like(s), s], dim=-1)
        t = torch.stack([torch.zeros_like(t), t], dim=-1)
    log_s = F.log_softmax(s / temperature, dim=-1)
    log_t = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    return kl * temperature**2
