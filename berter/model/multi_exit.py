"""MultiExitBert: one encoder backbone, an exit head per task after every encoder layer.

The backbone is a plain transformers encoder of a supported family (BERT, RoBERTa, ALBERT,
ELECTRA, DistilBERT, DeBERTa-v2: ``berter.model.families`` has one small adapter each); this
module wraps it rather than forking it: embeddings and encoder layers are called as they
are, one layer at a time, so the same code serves training (all exits from one pass), SMART
(a perturbed embedding output through ``encode``), and the early-exit engine (stop after any
layer). The attribute stays ``bert`` whatever the family (state-dict names start with it).

Pair tasks are fed in one of three ways:
- ``packed``   (concat=before_embed): ``[CLS] A [SEP] B [SEP]`` through the embeddings.
- ``after_embed`` (concat=after_embed): A and B embedded separately (positions restart
  for B, B gets token type 1, or 0 on a model without a second token type: RoBERTa,
  DistilBERT, DeBERTa-v3), the two sequences concatenated, then the encoder.
- ``siamese``  (cos_loss=on): A and B encoded separately with shared weights, stacked
  along the batch axis; each layer's exit mean-pools both and compares by cosine.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import logging as hf_logging

from berter.config import DEFAULT_MODEL, Config, layers_after_drop
from berter.data.encode import packaged_model_path
from berter.errors import ConfigError, first_line
from berter.model.families import Family, check_model_type, family_of
from berter.tasks import Batch, Task


@dataclass
class EncoderState:
    """Hidden states between two encoder layers, plus what the exits need to read them."""

    # [B, T, H] (siamese: [2B, T, H], A rows then B rows); before the first layer the
    # embedding module's width (ALBERT, ELECTRA: narrower than H)
    hidden: torch.Tensor
    mask: torch.Tensor  # [B, T] 1 for real tokens
    attn_mask: torch.Tensor | None  # the backbone's prepared attention mask, [B, ...]
    siamese: bool = False
    # batch-independent inputs of every layer (DeBERTa-v2's relative positions)
    shared: dict[str, Any] = field(default_factory=dict)

    def select(self, rows: torch.Tensor) -> EncoderState:
        """Keep only some examples (the early-exit engine drops exited rows)."""
        if self.siamese:
            n = self.hidden.shape[0] // 2
            rows = torch.cat([rows, rows + n])
        attn = self.attn_mask[rows] if self.attn_mask is not None else None
        return EncoderState(self.hidden[rows], self.mask[rows], attn, self.siamese, self.shared)


@dataclass
class ExitOutput:
    """One exit's output for one task.

    ``logits``: SST ``[B, 5]``; paraphrase ``[B]`` (a logit, or the cosine when siamese);
    STS ``[B]`` (a score, or the cosine when siamese). ``pooled``: ``[B, H]``, the vector the
    head read, used by learned exit modules (LTE, Q-exit). ``pair``: (u, v) sentence
    embeddings for siamese pair tasks.
    """

    logits: torch.Tensor
    pooled: torch.Tensor
    pair: tuple[torch.Tensor, torch.Tensor] | None = None


class ExitHead(nn.Module):
    """Pooler-style head (dense + tanh, then a linear layer), as in DeeBERT/BERxiT.

    It reads the mean of the layer's real-token states by default (``pooling=mean``): the
    packaged backbone was trained as a mean-pooled sentence encoder, so its [CLS] state
    carries little; ``pooling=cls`` reads [CLS] as the papers do with bert-base.
    """

    def __init__(self, hidden: int, out: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, out)

    def forward(self, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.tanh(self.dense(cls))
        return self.out(self.dropout(pooled)), pooled


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class MultiExitBert(nn.Module):
    def __init__(
        self,
        backbone: PreTrainedModel,
        tasks: list[Task],
        *,
        dropout: float = 0.1,
        concat: str = "after_embed",
        cos_loss: str = "off",
        pooling: str = "mean",
        exit_module: nn.Module | None = None,
    ):
        super().__init__()
        self.family: Family = family_of(getattr(backbone, "config", None))
        self.bert = backbone
        # sentence B of an after_embed pair gets type 1 only where the embeddings have one
        self.token_types = self.family.token_types(backbone.config)
        self.tasks = {t.name: t for t in tasks}
        self.concat = concat
        self.siamese = cos_loss == "on"
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        n = self.num_layers
        self.heads = nn.ModuleDict()
        for t in tasks:
            if self.siamese and t.is_pair:
                continue  # siamese pair exits are parameter-free: mean pool + cosine
            out = 1 if t.num_labels <= 2 else t.num_labels
            self.heads[t.name] = nn.ModuleList(ExitHead(hidden, out, dropout) for _ in range(n))
        # per-layer cosine threshold for siamese paraphrase, recalibrated on training data
        self.register_buffer("cos_threshold", torch.full((n,), 0.5))
        self.exit_module = exit_module  # owned by the exit method (LTE, Q-exit), may be None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(
        cls,
        cfg: Config,
        tasks: list[Task],
        backbone: PreTrainedModel | None = None,
        exit_module: Callable[[int, list[Task]], nn.Module | None] | None = None,
    ) -> MultiExitBert:
        """Load (or take) the backbone, apply dropout and drop_top, attach heads.

        ``exit_module(hidden_size, tasks)`` builds the exit method's own module (LTE, Q-exit:
        ``ExitMethod.build_module``); the exit method lives in a layer above the model, so the
        caller hands its builder down.
        """
        if backbone is None:
            backbone = load_backbone(cfg.model, cfg.dropout)
        else:
            set_dropout(backbone, cfg.dropout)
        family = family_of(backbone.config)
        left = layers_after_drop(cfg, family.num_layers(backbone))
        if cfg.drop_top:
            family.drop_top(backbone, left)
        return cls(
            backbone,
            tasks,
            dropout=cfg.dropout,
            concat=cfg.concat,
            cos_loss=cfg.cos_loss,
            pooling=cfg.pooling,
            exit_module=exit_module(backbone.config.hidden_size, tasks) if exit_module else None,
        )

    @property
    def num_layers(self) -> int:
        return self.family.num_layers(self.bert)

    @property
    def hidden_size(self) -> int:
        return self.bert.config.hidden_size

    # ------------------------------------------------------------------ layer-wise API
    def embed(self, batch: Batch) -> EncoderState:
        """Embedding layer output for the batch, in the pair layout this model uses.

        Word + position (+ token type), after the embedding LayerNorm and dropout: the
        embedding module's own output, what SMART perturbs. It is the first encoder layer's
        input, except where the family projects it into the encoder's width first (ELECTRA's
        ``embeddings_project``, ALBERT's ``embedding_hidden_mapping_in``: ``layer(0)`` does).
        """
        f, bert = self.family, self.bert
        if batch.input_ids_b is None:  # single sentence or packed pair
            types = batch.token_type_ids if self.token_types else None
            hidden = f.embed(bert, batch.input_ids, types, batch.attention_mask)
            return self._state(hidden, batch.attention_mask)
        a, b = batch.input_ids, batch.input_ids_b
        ma, mb = batch.attention_mask, batch.attention_mask_b
        if self.siamese and self.tasks[batch.task].is_pair:
            ha = f.embed(bert, a, None, ma)
            hb = f.embed(bert, b, None, mb)
            t = max(ha.shape[1], hb.shape[1])
            ha, ma = F.pad(ha, (0, 0, 0, t - ha.shape[1])), F.pad(ma, (0, t - ma.shape[1]))
            hb, mb = F.pad(hb, (0, 0, 0, t - hb.shape[1])), F.pad(mb, (0, t - mb.shape[1]))
            return self._state(torch.cat([ha, hb]), torch.cat([ma, mb]), siamese=True)
        # after_embed: embed each sentence on its own, then concatenate the sequences; on a
        # model without a second token type both sentences are type 0
        ha = f.embed(bert, a, torch.zeros_like(a), ma)
        hb = f.embed(bert, b, torch.ones_like(b) if self.token_types else torch.zeros_like(b), mb)
        return self._state(*f.join(ha, ma, hb, mb))

    def _state(
        self, hidden: torch.Tensor, mask: torch.Tensor, siamese: bool = False
    ) -> EncoderState:
        attn, shared = self.family.prepare(self.bert, hidden, mask)
        return EncoderState(hidden, mask, attn, siamese, shared)

    def layer(self, i: int, state: EncoderState) -> EncoderState:
        """Run encoder layer i (0-based) of the backbone, unchanged (layer 0 first takes the
        embedding output into the encoder's width, where the family has a projection)."""
        hidden = self.family.enter(self.bert, state.hidden) if i == 0 else state.hidden
        hidden = self.family.layer(self.bert, i, hidden, state)
        return EncoderState(hidden, state.mask, state.attn_mask, state.siamese, state.shared)

    def exit(self, i: int, task: str, state: EncoderState) -> ExitOutput:
        """Exit i's output for a task, from the hidden states after layer i."""
        if state.siamese:
            n = state.hidden.shape[0] // 2
            pooled = mean_pool(state.hidden, state.mask)
            u, v = pooled[:n], pooled[n:]
            cos = F.cosine_similarity(u, v, dim=-1)
            return ExitOutput(logits=cos, pooled=u * v, pair=(u, v))
        if self.pooling == "mean":
            summary = mean_pool(state.hidden, state.mask)
        else:
            summary = state.hidden[:, 0]
        logits, pooled = self.heads[task][i](summary)
        if logits.shape[-1] == 1:
            logits = logits.squeeze(-1)
        return ExitOutput(logits=logits, pooled=pooled)

    def forward(
        self,
        batch: Batch,
        layers: int | None = None,
        exits: Collection[int] | None = None,
    ) -> list[ExitOutput | None]:
        """Every exit's output (or the first ``layers`` exits') for the batch's task.

        ``exits``: compute only these exits' heads (the others are None) and stop after the
        deepest of them; training passes the exits its loss reads, so that a final-layer-only
        step runs no intermediate head and a layer-focus step no layer above its own.
        """
        return self.encode(self.embed(batch), batch.task, layers, exits)

    def encode(
        self,
        state: EncoderState,
        task: str,
        layers: int | None = None,
        exits: Collection[int] | None = None,
    ) -> list[ExitOutput | None]:
        """``forward`` from a given embedding output (``embed``'s, or SMART's perturbed one)."""
        n = layers or self.num_layers
        if exits is not None:
            n = min(n, max(exits, default=-1) + 1)
        outs: list[ExitOutput | None] = []
        for i in range(n):
            state = self.layer(i, state)
            outs.append(self.exit(i, task, state) if exits is None or i in exits else None)
        return outs

    # ------------------------------------------------------------------ parameters
    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding layer's weights (layer-wise lr decay trains them slowest), with the
        weights every layer shares (ELECTRA's and ALBERT's projection into the encoder's
        width, DeBERTa-v2's relative-position embeddings)."""
        return self.family.embedding_parameters(self.bert)

    def layer_parameters(self, i: int) -> list[nn.Parameter]:
        """Encoder layer i's weights (SLF trains one layer at a time). ALBERT: the shared
        layer group virtual layer i calls, so every virtual layer names the same weights."""
        return self.family.layer_parameters(self.bert, i)

    def head_parameters(self, i: int) -> list[nn.Parameter]:
        """Exit head i's weights for every task."""
        return [p for heads in self.heads.values() for p in heads[i].parameters()]

    def parameter_groups(
        self,
        lr: float,
        weight_decay: float,
        layer_lr_decay: float = 1.0,
        exit_module_lr: float | None = None,
    ) -> list[dict[str, Any]]:
        """The optimiser's parameter groups, in nanoGPT's ``configure_optimizers`` shape: the
        model knows which of its weights are decayed and how fast each layer trains; the
        caller only builds the optimiser over them.

        Biases, LayerNorm weights and other 1-d tensors get no weight decay. With
        ``layer_lr_decay`` < 1 encoder layer l of L (1 = lowest) trains at
        ``layer_lr_decay ** (L - l)`` of ``lr`` and the embeddings at ``** L``; exit heads keep
        ``lr`` (Zhang et al., *Revisiting Few-sample BERT Fine-tuning*: lower layers hold the
        more general features, so they move less). The exit method's own module (LTE, Q-exit)
        is one undecayed group at ``exit_module_lr`` (None: ``lr``); the exit method lives in
        a layer above the model, so the caller passes its rate. Decayed and undecayed weights
        stay in separate groups even at ``weight_decay`` 0, so a checkpoint's optimiser state
        always fits; groups keep the order of ``named_parameters``.
        """
        module = self.exit_module
        own = {id(p) for p in module.parameters()} if module is not None else set()
        scales = self.layer_lr_scales(layer_lr_decay)
        by_setting: dict[tuple[bool, float], list[nn.Parameter]] = {}  # (no decay, scale)
        extra = []
        for name, p in self.named_parameters():
            if id(p) in own:
                extra.append(p)
                continue
            no_decay = p.ndim < 2 or "LayerNorm" in name or name.endswith("bias")
            by_setting.setdefault((no_decay, scales.get(id(p), 1.0)), []).append(p)
        groups: list[dict[str, Any]] = [
            {"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
             "lr": lr * scale}
            for (no_decay, scale), params in by_setting.items()
        ]  # fmt: skip
        if extra:
            groups.append({"params": extra, "weight_decay": 0.0, "lr": exit_module_lr or lr})
        return groups

    def layer_lr_scales(self, decay: float) -> dict[int, float]:
        """Layer-wise learning-rate decay, by parameter id (absent: the full rate)."""
        if decay == 1.0:
            return {}
        n = self.num_layers
        scales = {id(p): decay**n for p in self.embedding_parameters()}
        for i in range(n):
            scales.update({id(p): decay ** (n - 1 - i) for p in self.layer_parameters(i)})
        return scales


def set_dropout(backbone: PreTrainedModel, p: float) -> None:
    """Apply the configured dropout to the backbone's hidden-state dropouts.

    Attention-probability dropout stays as the checkpoint was trained.
    """
    family = family_of(backbone.config)
    setattr(backbone.config, family.dropout_field, p)
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Dropout) and not name.endswith(family.attention_dropout):
            module.p = p


def new_backbone(config: Any) -> PreTrainedModel:
    """A randomly initialised backbone of a transformers config (a checkpoint's weights are
    loaded over it); a config of an unsupported family is a ConfigError."""
    family = family_of(config)
    return AutoModel.from_config(config, **family.build_kwargs())


def load_backbone(name: str, dropout: float) -> PreTrainedModel:
    """Load the packaged all-MiniLM-L6-v2 or any ``AutoModel`` name or path of a supported
    family (``berter.model.families``)."""
    path = packaged_model_path() if name in (DEFAULT_MODEL, "", None) else name
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused-pooler load report is noise here
    hf_logging.disable_progress_bar()
    try:
        try:
            config = AutoConfig.from_pretrained(path)
        except Exception as exc:  # transformers raises many kinds; the user needs one line
            raise ConfigError(f"cannot load model {name!r}: {first_line(exc)}") from None
        check_model_type(config, name)
        family = family_of(config)
        try:
            model = AutoModel.from_pretrained(path, config=config, **family.build_kwargs())
        except Exception as exc:
            raise ConfigError(f"cannot load model {name!r}: {first_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    set_dropout(model, dropout)
    return model
