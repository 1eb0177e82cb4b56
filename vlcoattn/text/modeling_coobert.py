"""CooBERT: BERT with collaborative multi-head self-attention.

Embeddings, post-LN blocks, pooler and LM head are BERT's, with BERT's module names, so a BERT
checkpoint maps onto CooBERT by renaming nothing but the attention projections
(see ``vlcoattn.text.convert``). Four model classes, as in transformers:

- ``CooBertModel``: the encoder (bidirectional, or causal when ``config.is_decoder``);
- ``CooBertForSequenceClassification``: pooled [CLS] -> classifier (regression / single / multi label);
- ``CooBertForMaskedLM``: BERT's MLM head, tied to the word embeddings;
- ``CooBertForCausalLM``: causal encoder + LM head + ``GenerationMixin`` (KV cache: ``DynamicCache``
  holding ONE shared key head per layer and per-head values).

Attention runs on SDPA by default, or on the explicit softmax (``attn_implementation="eager"``) that also
returns each head's probabilities; ``output_hidden_states`` / ``output_attentions`` are recorded as in BERT.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    SequenceClassifierOutput,
)
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .attention import CollaborativeSelfAttention, build_attention_mask, concatenation_mixing
from .configuration_coobert import CooBertConfig

logger = logging.get_logger(__name__)

# transformers renamed the KV cache from ``past_key_values`` to ``cache`` (5.24: ``generate()`` passes
# ``cache=`` and reads ``outputs.cache``; a model that only reads ``past_key_values`` silently decodes
# every new token without its context). CooBERT accepts both names and returns the installed one's.
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithCrossAttentions)} \
    else "past_key_values"


def resolve_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The KV cache passed under either name (both at once is an error)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the KV cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def output_cache(output: Any) -> Cache | None:
    """The KV cache of a model output, whatever name the installed transformers gives it."""
    return getattr(output, CACHE_FIELD)


class CooBertEmbeddings(nn.Module):
    """word + absolute position + token type embeddings, LayerNorm, dropout (BERT's)."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        position_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        if token_type_ids is None:
            token_type_ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
        x = x + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class CooBertSelfOutput(nn.Module):
    """Output projection W_O, dropout, residual, LayerNorm (post-LN)."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)


class CooBertAttention(nn.Module):
    """Collaborative self-attention + BERT's output block (names ``self`` / ``output`` as in BERT)."""

    def __init__(self, config: CooBertConfig, layer_idx: int | None = None) -> None:
        super().__init__()
        self.self = CollaborativeSelfAttention(
            config.hidden_size,
            config.num_attention_heads,
            config.shared_key_dim,
            dropout=config.attention_probs_dropout_prob,
            layer_idx=layer_idx,
        )
        self.output = CooBertSelfOutput(config)

    def forward(
        self, x: torch.Tensor, attn_mask=None, is_causal=False, cache=None, attn_implementation: str = "sdpa"
    ) -> torch.Tensor:
        """The probabilities the eager path returns are recorded from ``self.self`` by the model's
        ``output_attentions`` hooks; this block passes on the hidden states only."""
        context, _ = self.self(x, attn_mask, is_causal, cache, attn_implementation)
        return self.output(context, x)


class CooBertIntermediate(nn.Module):
    """FFN first half: dense D -> intermediate, activation."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class CooBertOutput(CooBertSelfOutput):
    """FFN second half: dense intermediate -> D, dropout, residual, LayerNorm."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__(config)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)


class CooBertLayer(GradientCheckpointingLayer):
    """One post-LN transformer block: collaborative self-attention, then the FFN. Recomputed in the backward
    pass under ``gradient_checkpointing_enable()`` (transformers' ``GradientCheckpointingLayer``)."""

    def __init__(self, config: CooBertConfig, layer_idx: int | None = None) -> None:
        super().__init__()
        self.attention = CooBertAttention(config, layer_idx)
        self.intermediate = CooBertIntermediate(config)
        self.output = CooBertOutput(config)

    def forward(
        self, x: torch.Tensor, attn_mask=None, is_causal=False, cache=None, attn_implementation: str = "sdpa"
    ) -> torch.Tensor:
        x = self.attention(x, attn_mask, is_causal, cache, attn_implementation)
        return self.output(self.intermediate(x), x)


class CooBertEncoder(nn.Module):
    """The stack of blocks (``encoder.layer.N`` as in BERT)."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(CooBertLayer(config, i) for i in range(config.num_hidden_layers))


class CooBertPooler(nn.Module):
    """tanh(W h_[CLS] + b), as BERT."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class CooBertPreTrainedModel(PreTrainedModel):
    config_class = CooBertConfig
    base_model_prefix = "coobert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CooBertLayer"]
    # output_hidden_states / output_attentions (call or config) are recorded by transformers' hooks, as in BERT:
    # every block's output, and the probabilities the eager attention path returns
    _can_record_outputs = {"hidden_states": CooBertLayer, "attentions": CollaborativeSelfAttention}

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """``set_attn_implementation("eager" | "sdpa")`` works: every call reads ``config._attn_implementation``
        (transformers' own check looks for its attention-function registry in the module source)."""
        return True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear / Embedding normal(0, initializer_range), LayerNorm (1, 0)
        if isinstance(module, CollaborativeSelfAttention):
            init.copy_(module.mixing, concatenation_mixing(module.num_heads, module.shared_key_dim))
        elif isinstance(module, CooBertLMPredictionHead):
            init.zeros_(module.bias)


class CooBertModel(CooBertPreTrainedModel):
    """The CooBERT encoder: embeddings -> N collaborative blocks (-> pooler)."""

    def __init__(self, config: CooBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = CooBertEmbeddings(config)
        self.encoder = CooBertEncoder(config)
        self.pooler = CooBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def attention_implementation(self, output_attentions: bool) -> str:
        """The config's attention path, or "eager" for a call that asks for the probabilities (SDPA
        cannot return them; BERT's SDPA path then returns none, CooBERT computes this call eagerly)."""
        implementation = self.config._attn_implementation or "sdpa"
        if output_attentions and implementation != "eager":
            logger.warning_once(
                "CooBERT: output_attentions=True runs this call on the eager attention path (SDPA returns no "
                "probabilities); load with attn_implementation='eager' to make it the default"
            )
            return "eager"
        return implementation

    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        """input_ids (B, T) [or inputs_embeds (B, T, D)], attention_mask (B, T_past + T) of 1/0.

        Causal when ``config.is_decoder``; then ``use_cache`` returns a ``DynamicCache`` in the output's
        ``CACHE_FIELD`` (``cache``, or ``past_key_values`` before transformers 5.24; both names are
        accepted as input). Positions are ``T_past + arange(T)`` for the bidirectional encoder (as
        BERT) and count real tokens only in causal mode, so left-padded generation is correct.
        ``output_hidden_states`` / ``output_attentions`` / ``return_dict`` (keywords, or the config's
        defaults) work as in transformers; the attentions are (B, N_h, T, T_past + T) per layer.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if encoder_hidden_states is not None or kwargs.get("encoder_attention_mask") is not None:
            raise ValueError("CooBERT has no cross-attention: encoder_hidden_states is not supported")
        causal = self.config.is_decoder
        if use_cache is None:
            use_cache = self.config.use_cache and causal
        if use_cache and not causal:
            raise ValueError("use_cache needs a causal model (config.is_decoder=True)")
        cache = resolve_cache(cache, past_key_values)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        B, T = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        past_len = cache.get_seq_length() if cache is not None else 0
        device = input_ids.device if input_ids is not None else inputs_embeds.device

        if position_ids is None:
            if causal and attention_mask is not None:  # count real tokens: left padding starts at 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past_len, past_len + T, device=device)[None].expand(B, -1)
        x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds)  # (B, T, D)
        attn_mask, is_causal = build_attention_mask(attention_mask, T, past_len, causal, x.dtype)
        implementation = self.attention_implementation(kwargs.get("output_attentions", self.config.output_attentions))
        for block in self.encoder.layer:
            x = block(x, attn_mask, is_causal, cache, implementation)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=x,
            pooler_output=self.pooler(x) if self.pooler is not None else None,
            **{CACHE_FIELD: cache if use_cache else None},
        )


class CooBertForSequenceClassification(CooBertPreTrainedModel):
    """Pooled [CLS] -> dropout -> linear. Loss by ``config.problem_type`` (inferred as in BERT)."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.coobert = CooBertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """num_items_in_batch: labelled rows in the whole optimizer step (micro-batches x ranks); the
        single-label loss is then its sum over rows divided by it (default: the batch mean). Other
        keywords (``output_hidden_states``, ``output_attentions``, ...) go to the encoder."""
        out = self.coobert(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, use_cache=False, **kwargs
        )
        logits = self.classifier(self.dropout(out.pooler_output))  # (B, num_labels)
        loss = None if labels is None else self.classification_loss(logits, labels, num_items_in_batch)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )

    def classification_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, num_items: int | None = None
    ) -> torch.Tensor:
        """MSE (regression), cross-entropy (single label) or BCE (multi label), as BERT picks them."""
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float().view(-1)) if self.num_labels == 1 \
                else F.mse_loss(logits, labels.float())
        if self.config.problem_type == "single_label_classification":
            if num_items is None:
                return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            summed = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), reduction="sum")
            return summed / max(num_items, 1)
        return F.binary_cross_entropy_with_logits(logits, labels.float())


class CooBertPredictionHeadTransform(nn.Module):
    """dense -> act -> LayerNorm, before the vocabulary projection."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class CooBertLMPredictionHead(nn.Module):
    """BERT's LM head: transform -> decoder (tied to the word embeddings) + bias."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__()
        self.transform = CooBertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x)) + self.bias  # (B, T, V)


class CooBertOnlyMLMHead(nn.Module):
    """Wrapper giving BERT's parameter names ``cls.predictions.*``."""

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__()
        self.predictions = CooBertLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class _CooBertLMBase(CooBertPreTrainedModel):
    """Shared body of the masked and causal LMs: encoder without pooler + tied LM head."""

    _tied_weights_keys = {"cls.predictions.decoder.weight": "coobert.embeddings.word_embeddings.weight"}

    def __init__(self, config: CooBertConfig) -> None:
        super().__init__(config)
        self.coobert = CooBertModel(config, add_pooling_layer=False)
        self.cls = CooBertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.cls.predictions.decoder = value

    def _resize_token_embeddings(
        self, new_num_tokens: int | None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """transformers' resize of the embeddings and the decoder, plus the LM bias (kept, or cut, per token;
        new tokens start at 0, as the bias is initialised)."""
        embeddings = super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        old = self.cls.predictions.bias
        new = old.new_zeros(embeddings.num_embeddings)
        n = min(old.numel(), new.numel())
        new[:n] = old.detach()[:n]
        self.cls.predictions.bias = nn.Parameter(new, requires_grad=old.requires_grad)
        return embeddings


class CooBertForMaskedLM(_CooBertLMBase):
    """Bidirectional CooBERT + MLM head; ``labels`` of -100 are ignored."""

    def __init__(self, config: CooBertConfig) -> None:
        if config.is_decoder:
            raise ValueError("CooBertForMaskedLM needs a bidirectional config (is_decoder=False)")
        super().__init__(config)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        out = self.coobert(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, use_cache=False, **kwargs
        )
        logits = self.cls(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


class CooBertForCausalLM(_CooBertLMBase, GenerationMixin):
    """Causal CooBERT + LM head, for ``generate()``. Always causal: a config with ``is_decoder=False`` is
    copied with ``is_decoder=True`` (the caller's config is left as it is)."""

    def __init__(self, config: CooBertConfig) -> None:
        if not config.is_decoder:
            config = copy.deepcopy(config)
            config.is_decoder = True
        super().__init__(config)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        num_items_in_batch: int | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithCrossAttentions:
        """labels (B, T): next-token targets are ``labels[:, 1:]`` (shifted here); -100 is ignored.
        num_items_in_batch: target tokens in the whole optimizer step; the loss is then the summed token
        NLL divided by it (default: the mean over this batch's targets)."""
        if labels is not None:
            use_cache = False
        out = self.coobert(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            cache=resolve_cache(cache, past_key_values), use_cache=use_cache, **kwargs,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.cls(hidden)  # (B, T, V)
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
            targets = labels[:, 1:].reshape(-1)
            if num_items_in_batch is None:
                loss = F.cross_entropy(shifted, targets, ignore_index=-100)
            else:
                loss = F.cross_entropy(shifted, targets, ignore_index=-100, reduction="sum") / max(num_items_in_batch, 1)
        return CausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions,
            **{CACHE_FIELD: output_cache(out)},
        )
