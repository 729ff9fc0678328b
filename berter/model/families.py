"""Encoder families: one small adapter per transformers encoder, so MultiExitBert runs any of
them layer by layer.

The early-exit papers fine-tune several encoders: BERxiT BERT and RoBERTa, PABEE BERT and
ALBERT, PALBERT ALBERT and RoBERTa; ELECTRA, DistilBERT and DeBERTa-v2 are the other common
ones. Their transformers modules differ only in a few places, and an adapter says each:

- the embedding module and how it is called (token types or not; DeBERTa-v2's embeddings
  also take the padding mask and zero the padded positions);
- what turns the embedding output into the encoder's width (``enter``): ELECTRA's
  ``embeddings_project`` and ALBERT's ``encoder.embedding_hidden_mapping_in``, applied before
  the first layer, so that ``embed`` returns the embedding module's own output, what SMART
  perturbs (mt-dnn ``mt_dnn/matcher.py`` ``embed_encode``: ``self.bert.embeddings(...)``);
- the list of (virtual) layers and how one is called: the attention mask each expects
  (transformers' own ``create_bidirectional_mask``, or DeBERTa-v2's ``get_attention_mask``),
  DeBERTa-v2's relative-position inputs (``relative_pos`` from ``encoder.get_rel_pos`` and
  ``rel_embeddings`` from ``encoder.get_rel_embedding``, its convolution after layer 0), and
  ALBERT's shared layer group called once per virtual layer;
- which parameters are the embeddings and which are layer i, for the strategies (SLF,
  two-stage) and layer-wise learning-rate decay; and how ``drop_top`` removes layers.

This module imports neither torch nor transformers at import time: the sweep driver calls
``check_model_type`` before Ray starts, where loading modelling code would cost seconds.
Adapters hold no state; each method takes the backbone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berter.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn


class Family:
    """BERT's layout (``embeddings``, ``encoder.layer``); other families override what differs."""

    model_type = "bert"
    # the constructor's add_pooling_layer (False: every exit has its own head), where it has one
    pooler = True
    # config field of the hidden-state dropout, which the configured dropout replaces
    dropout_field = "hidden_dropout_prob"
    # attention-probability dropouts keep the checkpoint's rate (module name suffixes)
    attention_dropout: tuple[str, ...] = ("attention.self.dropout",)

    # ------------------------------------------------------------------ building
    def build_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of ``AutoModel.from_config`` / ``from_pretrained``."""
        return {"add_pooling_layer": False} if self.pooler else {}

    def token_types(self, config: Any) -> bool:
        """Whether the embeddings have a second token type (sentence B of a pair)."""
        return int(getattr(config, "type_vocab_size", 0) or 0) >= 2

    def num_layers(self, bert: nn.Module) -> int:
        return len(bert.encoder.layer)

    def module(self, bert: nn.Module, i: int) -> nn.Module:
        """The module (virtual) layer i calls."""
        return bert.encoder.layer[i]

    def drop_top(self, bert: nn.Module, left: int) -> None:
        """Keep the bottom ``left`` layers (and say so in the config a checkpoint saves)."""
        bert.encoder.layer = bert.encoder.layer[:left]
        bert.config.num_hidden_layers = left

    # ------------------------------------------------------------------ running
    def embed(
        self,
        bert: nn.Module,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """The embedding module's output (None token types: all type 0)."""
        return bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def join(
        self, ha: torch.Tensor, ma: torch.Tensor, hb: torch.Tensor, mb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """An after_embed pair's sequence: sentence A's embeddings, then B's, and its mask.

        With absolute positions (embedded already) where A's padding sits does not matter.
        """
        import torch

        return torch.cat([ha, hb], dim=1), torch.cat([ma, mb], dim=1)

    def enter(self, bert: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The embedding output in the encoder's width (the first layer's input)."""
        return hidden

    def prepare(
        self, bert: nn.Module, hidden: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """The attention mask every layer takes, and batch-independent layer inputs."""
        from transformers.masking_utils import create_bidirectional_mask

        attn = create_bidirectional_mask(
            config=bert.config,
            inputs_embeds=hidden,
            attention_mask=mask,
            allow_is_bidirectional_skip=False,  # a real mask, so the engine can drop rows
        )
        return attn, {}

    def layer(self, bert: nn.Module, i: int, hidden: torch.Tensor, state: Any) -> torch.Tensor:
        """Layer i on ``hidden`` (``state``: the EncoderState it came with)."""
        out = self.module(bert, i)(hidden, state.attn_mask)
        return out[0] if isinstance(out, tuple) else out  # older transformers return a tuple

    # ------------------------------------------------------------------ parameters
    def entry_modules(self, bert: nn.Module) -> list[nn.Module]:
        """Modules of ``enter`` and other weights shared by every layer: grouped with the
        embeddings (SLF's ``slf_embeddings``, layer-wise lr decay)."""
        return []

    def embedding_parameters(self, bert: nn.Module) -> list[nn.Parameter]:
        modules = [bert.embeddings, *self.entry_modules(bert)]
        return [p for m in modules for p in m.parameters()]

    def layer_parameters(self, bert: nn.Module, i: int) -> list[nn.Parameter]:
        return list(self.module(bert, i).parameters())


class RobertaFamily(Family):
    """BERT's modules; the token-type table has one row, so sentence B is type 0 too."""

    model_type = "roberta"


class ElectraFamily(Family):
    """BERT's modules, plus ``embeddings_project`` when the embeddings are narrower."""

    model_type = "electra"
    pooler = False

    def enter(self, bert: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        project = getattr(bert, "embeddings_project", None)
        return project(hidden) if project is not None else hidden

    def entry_modules(self, bert: nn.Module) -> list[nn.Module]:
        project = getattr(bert, "embeddings_project", None)
        return [project] if project is not None else []


class AlbertFamily(Family):
    """One shared layer group, called once per virtual layer (``num_hidden_layers`` of them).

    Each virtual layer has its own exit head; ``drop_top`` lowers the virtual count.
    ``layer_parameters(i)`` is the group virtual layer i calls, so every virtual layer of a
    group names the same weights. A virtual layer is one call of a group: with
    ``inner_group_num > 1`` it holds several transformer layers and has one exit.
    """

    model_type = "albert"
    attention_dropout = ("attention.attention_dropout",)

    def group_of(self, config: Any, i: int) -> int:
        """The layer group of virtual layer i, as ``AlbertTransformer.forward`` picks it."""
        return int(i / (config.num_hidden_layers / config.num_hidden_groups))

    def num_layers(self, bert: nn.Module) -> int:
        return int(bert.config.num_hidden_layers)

    def module(self, bert: nn.Module, i: int) -> nn.Module:
        return bert.encoder.albert_layer_groups[self.group_of(bert.config, i)]

    def drop_top(self, bert: nn.Module, left: int) -> None:
        config = bert.config
        if left < config.num_hidden_layers and config.num_hidden_groups > 1:
            # the virtual-layer -> group map depends on the layer count: fewer layers would
            # call other groups, and a saved checkpoint could not say which
            raise ConfigError(
                f"drop_top is not supported on an ALBERT with num_hidden_groups="
                f"{config.num_hidden_groups} (only with one shared layer group)"
            )
        config.num_hidden_layers = left

    def enter(self, bert: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return bert.encoder.embedding_hidden_mapping_in(hidden)

    def entry_modules(self, bert: nn.Module) -> list[nn.Module]:
        return [bert.encoder.embedding_hidden_mapping_in]

    def layer(self, bert: nn.Module, i: int, hidden: torch.Tensor, state: Any) -> torch.Tensor:
        return self.module(bert, i)(hidden, state.attn_mask)


class DistilBertFamily(Family):
    """``transformer.layer``; no token types, no pooler; its dropout field is ``dropout``."""

    model_type = "distilbert"
    pooler = False
    dropout_field = "dropout"
    attention_dropout = ("attention.dropout",)

    def token_types(self, config: Any) -> bool:
        return False

    def num_layers(self, bert: nn.Module) -> int:
        return len(bert.transformer.layer)

    def module(self, bert: nn.Module, i: int) -> nn.Module:
        return bert.transformer.layer[i]

    def drop_top(self, bert: nn.Module, left: int) -> None:
        bert.transformer.layer = bert.transformer.layer[:left]
        bert.transformer.n_layers = left
        bert.config.num_hidden_layers = left  # DistilBertConfig maps it to n_layers

    def embed(
        self,
        bert: nn.Module,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        return bert.embeddings(input_ids)


class DebertaV2Family(Family):
    """Disentangled attention: every layer also reads the relative positions and embeddings.

    The embeddings take the padding mask (padded positions are zeroed); the attention mask is
    ``encoder.get_attention_mask``'s [B, 1, T, T]; ``relative_pos`` is built once per
    sequence length, ``rel_embeddings`` on every call (a weight, LayerNormed when
    ``norm_rel_ebd`` asks); the convolution (``conv_kernel_size > 0``) follows layer 0 and is
    part of it. The relative-position embeddings are grouped with the embeddings. The usual
    DeBERTa-v3 configs have no token types (``type_vocab_size=0``).

    An after_embed pair is joined with B's real tokens right after A's (the padding of both
    after them): attention reads the distance between two tokens from their places in the
    sequence, and A's padding in between would make it depend on the longest A in the batch.
    """

    model_type = "deberta-v2"
    pooler = False

    def embed(
        self,
        bert: nn.Module,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        return bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, mask=mask)

    def join(
        self, ha: torch.Tensor, ma: torch.Tensor, hb: torch.Tensor, mb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = super().join(ha, ma, hb, mb)
        # real tokens first, in order (a stable sort on "is padding"), then the padding
        order = (mask == 0).int().sort(dim=1, stable=True).indices
        index = order.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, index), mask.gather(1, order)

    def prepare(
        self, bert: nn.Module, hidden: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, Any]]:
        encoder = bert.encoder
        return encoder.get_attention_mask(mask), {"relative_pos": encoder.get_rel_pos(hidden)}

    def layer(self, bert: nn.Module, i: int, hidden: torch.Tensor, state: Any) -> torch.Tensor:
        encoder = bert.encoder
        out, _ = encoder.layer[i](
            hidden,
            state.attn_mask,
            relative_pos=state.shared["relative_pos"],
            rel_embeddings=encoder.get_rel_embedding(),
        )
        if i == 0 and encoder.conv is not None:
            out = encoder.conv(hidden, out, state.mask)
        return out

    def entry_modules(self, bert: nn.Module) -> list[nn.Module]:
        encoder = bert.encoder
        return [m for m in (getattr(encoder, "rel_embeddings", None),
                            getattr(encoder, "LayerNorm", None)) if m is not None]  # fmt: skip

    def layer_parameters(self, bert: nn.Module, i: int) -> list[nn.Parameter]:
        params = super().layer_parameters(bert, i)
        if i == 0 and bert.encoder.conv is not None:
            params += list(bert.encoder.conv.parameters())
        return params


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family(), RobertaFamily(), AlbertFamily(), ElectraFamily(),
        DistilBertFamily(), DebertaV2Family(),
    )
}  # fmt: skip


def check_model_type(config: Any, name: str | None = None) -> None:
    """Refuse, in one line naming the supported ones, a config whose model type has no adapter.

    ``config``: a transformers config (anything with ``model_type``); ``name``: the model's
    name or path, for the message.
    """
    try:
        family_of(config)
    except ConfigError as exc:
        raise ConfigError(f"model {name!r}: {exc}" if name else str(exc)) from None


def family_of(config: Any) -> Family:
    """The adapter of a transformers config's ``model_type``."""
    model_type = getattr(config, "model_type", None) or "unknown"
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ConfigError(
            f"model type {model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(FAMILIES))}"
        ) from None
