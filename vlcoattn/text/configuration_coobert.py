"""CooBertConfig: a BERT config plus the width of the shared query/key projection."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..utils.checks import check_multiple, check_positive


@strict
class CooBertConfig(PreTrainedConfig):
    r"""Configuration of a CooBERT model: BERT with collaborative multi-head attention.

    All fields are BERT's (so a ``BertConfig`` maps onto it field by field) plus:

    shared_key_dim (`int`, *optional*): D~k, the width of the ONE query/key projection shared by all
        heads. ``None`` means ``hidden_size`` (the exact-conversion setting). The attention scale
        stays ``1/sqrt(hidden_size / num_attention_heads)`` whatever D~k is.
    is_decoder (`bool`): causal self-attention (used by ``CooBertForCausalLM``).

    BERT options CooBERT does not implement are rejected rather than ignored: ``position_embedding_type``
    other than "absolute" and ``add_cross_attention=True``.
    """

    model_type = "coobert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    shared_key_dim: int | None = None
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = True
    classifier_dropout: float | int | None = None
    is_decoder: bool = False
    add_cross_attention: bool = False
    position_embedding_type: str = "absolute"
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.shared_key_dim is None:
            self.shared_key_dim = self.hidden_size
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "shared_key_dim", "max_position_embeddings"):
            check_positive(f"CooBertConfig.{name}", getattr(self, name))
        if self.position_embedding_type != "absolute":
            raise ValueError(f"CooBertConfig.position_embedding_type must be 'absolute' (CooBERT has no relative "
                             f"position scores), got {self.position_embedding_type!r}")
        if self.add_cross_attention:
            raise ValueError("CooBertConfig.add_cross_attention must be False (CooBERT has no cross-attention)")
        check_multiple("CooBertConfig.hidden_size", self.hidden_size, self.num_attention_heads,
                       "one slice per num_attention_heads head")
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        """Per-head value width D / N_h (also sets the attention scale)."""
        return self.hidden_size // self.num_attention_heads
