"""CooBERT: BERT with collaborative multi-head attention (configs, models, conversion)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from .attention import CollaborativeSelfAttention, collaborative_attention_reference
from .configuration_coobert import CooBertConfig
from .modeling_coobert import (
    CACHE_FIELD,
    CooBertForCausalLM,
    CooBertForMaskedLM,
    CooBertForSequenceClassification,
    CooBertLayer,
    CooBertModel,
    CooBertPreTrainedModel,
    output_cache,
)

AutoConfig.register(CooBertConfig.model_type, CooBertConfig, exist_ok=True)
AutoModel.register(CooBertConfig, CooBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(CooBertConfig, CooBertForSequenceClassification, exist_ok=True)
AutoModelForMaskedLM.register(CooBertConfig, CooBertForMaskedLM, exist_ok=True)
AutoModelForCausalLM.register(CooBertConfig, CooBertForCausalLM, exist_ok=True)

__all__ = [
    "CACHE_FIELD",
    "CollaborativeSelfAttention",
    "CooBertConfig",
    "CooBertForCausalLM",
    "CooBertForMaskedLM",
    "CooBertForSequenceClassification",
    "CooBertLayer",
    "CooBertModel",
    "CooBertPreTrainedModel",
    "collaborative_attention_reference",
    "output_cache",
]
