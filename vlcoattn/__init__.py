"""vlcoattn: CooBERT text encoder, timm backbones and spatially modulated co-attention (SMCA).

``import vlcoattn`` registers the CooBERT classes with transformers' Auto classes.
"""

from .text import (
    CollaborativeSelfAttention,
    CooBertConfig,
    CooBertForCausalLM,
    CooBertForMaskedLM,
    CooBertForSequenceClassification,
    CooBertModel,
)

__version__ = "0.1.0"

__all__ = [
    "CollaborativeSelfAttention",
    "CooBertConfig",
    "CooBertForCausalLM",
    "CooBertForMaskedLM",
    "CooBertForSequenceClassification",
    "CooBertModel",
    "__version__",
]
