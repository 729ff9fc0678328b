"""SMART: smoothness-inducing adversarial regularisation (Jiang et al., 2019).

The term added to the task loss is ``R_s = max_{||x' - x|| <= eps} l_s(f(x'), f(x))``: how far
a small, adversarially chosen perturbation of the input moves the model's outputs. As in the
public reference implementations (mt-dnn, smart-pytorch):

1. the *embedding layer's output* is perturbed (word + position + token type, after the
   embedding LayerNorm and dropout, as the first encoder layer receives it), starting from
   Gaussian noise of std ``smart_eps``. mt-dnn, ``mt_dnn/matcher.py`` (commit f39c1d9, the
   SMART release): ``embed_encode`` returns ``self.bert.embeddings(input_ids,
   token_type_ids)`` and ``embed_forward`` runs the encoder layers on ``embed + noise``;
   ``mt_dnn/perturbation.py`` ``SmartPerturbation.forward`` draws the noise and steps it;
   smart-pytorch's README BERT example perturbs ``model.bert.embeddings(...)`` likewise.
   Every pair layout is perturbed the same way: a packed pair, the two separately embedded
   halves of an ``after_embed`` pair, and both sentences of a siamese pair. On ALBERT and
   ELECTRA the embedding module's output is narrower than the encoder and is perturbed
   there, before the projection into the encoder's width, as mt-dnn perturbs the output of
   ``self.bert.embeddings`` whatever the encoder (``model.embed``, berter.model.families);
2. ``smart_steps`` ascent steps each take the gradient of the divergence between perturbed and
   (detached) clean outputs w.r.t. the noise, add ``smart_step`` times it, and rescale every
   token's noise by its infinity norm (``_norm_grad`` in ``mt_dnn/perturbation.py``,
   ``inf_norm`` in ``smart_pytorch/smart_pytorch.py``: so, as in the references, the
   perturbation after an ascent step has unit infinity norm per token whatever ``smart_eps``,
   which next to the LayerNorm-scaled embedding output is well below its size); a step whose
   gradient is not finite is skipped, keeping the current perturbation;
3. the final term compares perturbed and clean outputs with a symmetric KL divergence for
   classification exits (each direction with its target detached, as ``SymKlCriterion`` in
   ``mt_dnn/loss.py``; a single binary logit is the two-class distribution
   ``[1 - sigmoid, sigmoid]``) and MSE for regression exits and for siamese exits, whose
   output is a cosine.

The term is summed over the exits the strategy trains at this step, like the task loss, so
``smart_lambda`` weighs each exit's regulariser against its own task loss.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from berter.config import Config
from berter.model.multi_exit import EncoderState, ExitOutput, MultiExitBert
from berter.tasks import Batch

NORM_EPS = 1e-6  # keeps the infinity-norm rescaling finite for an all-zero token


def _as_distribution_logits(logits: torch.Tensor) -> torch.Tensor:
    """Class logits [B, C]; a single binary logit [B] becomes the two classes [0, logit]."""
    if logits.dim() == 1:
        return torch.stack([torch.zeros_like(logits), logits], dim=-1)
    return logits


def divergence(
    adv: ExitOutput, clean: ExitOutput, regression: bool, symmetric: bool = True
) -> torch.Tensor:
    """``l_s`` between one exit's perturbed and clean outputs.

    ``symmetric=False`` is the ascent objective: KL(clean || perturbed) with the clean side
    detached. ``symmetric=True`` is the final term, where both sides receive gradients.
    """
    a, c = adv.logits.float(), clean.logits.float()
    if regression or adv.pair is not None:  # a score, or a siamese cosine
        return F.mse_loss(a, c if symmetric else c.detach())
    a, c = _as_distribution_logits(a), _as_distribution_logits(c)
    forward = F.kl_div(
        F.log_softmax(a, dim=-1), F.softmax(c.detach(), dim=-1), reduction="batchmean"
    )
    if not symmetric:
        return forward
    backward = F.kl_div(
        F.log_softmax(c, dim=-1), F.softmax(a.detach(), dim=-1), reduction="batchmean"
    )
    return forward + backward


def _exits_divergence(
    outs: list[ExitOutput],
    clean_outs: list[ExitOutput],
    exits: tuple[int, ...],
    regression: bool,
    symmetric: bool,
) -> torch.Tensor:
    return sum(divergence(outs[i], clean_outs[i], regression, symmetric) for i in exits)


def _project(noise: torch.Tensor) -> torch.Tensor:
    """Rescale each token's perturbation by its infinity norm (the references' 'inf' norm)."""
    return noise / (noise.abs().amax(dim=-1, keepdim=True) + NORM_EPS)


def _perturbed(embedded: EncoderState, noise: torch.Tensor) -> EncoderState:
    return replace(embedded, hidden=embedded.hidden + noise)


def adversarial_noise(
    model: MultiExitBert,
    batch: Batch,
    clean_outs: list[ExitOutput],
    exits: tuple[int, ...],
    cfg: Config,
    embedded: EncoderState | None = None,
) -> torch.Tensor:
    """The perturbation of the embedding output (``model.embed``) after the ascent steps."""
    if embedded is None:
        embedded = model.embed(batch)
    base = replace(embedded, hidden=embedded.hidden.detach())
    noise = torch.randn_like(base.hidden) * cfg.smart_eps
    regression = model.tasks[batch.task].is_regression
    layers = max(exits) + 1
    for _ in range(int(cfg.smart_steps)):
        noise = noise.detach().requires_grad_()
        outs = model.encode(_perturbed(base, noise), batch.task, layers=layers)
        loss = _exits_divergence(outs, clean_outs, exits, regression, symmetric=False)
        if not torch.is_tensor(loss) or not loss.requires_grad:
            break  # the outputs do not depend on the input: nothing to ascend
        (grad,) = torch.autograd.grad(loss, noise, allow_unused=True)
        grad = torch.zeros_like(noise) if grad is None else grad
        # A non-finite gradient skips the step (the current perturbation stays); decided on
        # the device, since asking the host would stall the GPU once per SMART batch.
        finite = torch.isfinite(grad).all()
        noise = torch.where(finite, _project(noise + cfg.smart_step * grad.nan_to_num()), noise)
    return noise.detach()


def smart_loss(
    model: MultiExitBert,
    batch: Batch,
    clean_outs: list[ExitOutput],
    exits: tuple[int, ...],
    cfg: Config,
) -> torch.Tensor:
    """The adversarial regulariser R_s for one batch, summed over ``exits``."""
    if not exits:
        return clean_outs[-1].logits.new_zeros(())
    embedded = model.embed(batch)
    noise = adversarial_noise(model, batch, clean_outs, exits, cfg, embedded)
    outs = model.encode(_perturbed(embedded, noise), batch.task, layers=max(exits) + 1)
    regression = model.tasks[batch.task].is_regression
    return _exits_divergence(outs, clean_outs, exits, regression, symmetric=True)
