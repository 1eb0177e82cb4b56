"""vlcoattn: CooBERT text encoder, timm backbones and spatially modulated co-attention (SMCA).

``import vlcoattn`` registers the CooBERT and VLCoAttn classes with transformers' Auto classes (models,
``AutoProcessor``, ``AutoImageProcessor``) and the ``vlcoattn-vqa`` / ``vlcoattn-grounding`` /
``vlcoattn-phrase-grounding`` pipelines.
"""

from .fusion import SMCACrossAttention, SMCAFusionEncoder, gaussian_log_prior
from .infer import pipelines  # noqa: F401  (registers the vlcoattn-* pipelines)
from .models import (
    VLCoAttnConfig,
    VLCoAttnForGrounding,
    VLCoAttnForMultitask,
    VLCoAttnForPhraseGrounding,
    VLCoAttnForQuestionAnswering,
    VLCoAttnImageProcessor,
    VLCoAttnModel,
    VLCoAttnPreTrainedModel,
    VLCoAttnProcessor,
    grounding_loss,
    prior_heatmaps,
)
from .text import (
    CollaborativeSelfAttention,
    CooBertConfig,
    CooBertForCausalLM,
    CooBertForMaskedLM,
    CooBertForSequenceClassification,
    CooBertModel,
)
from .vision import VisionBackbone, efficientnet_lite0_timm_file

__version__ = "0.1.0"

__all__ = [
    "CollaborativeSelfAttention",
    "CooBertConfig",
    "CooBertForCausalLM",
    "CooBertForMaskedLM",
    "CooBertForSequenceClassification",
    "CooBertModel",
    "SMCACrossAttention",
    "SMCAFusionEncoder",
    "VLCoAttnConfig",
    "VLCoAttnForGrounding",
    "VLCoAttnForMultitask",
    "VLCoAttnForPhraseGrounding",
    "VLCoAttnForQuestionAnswering",
    "VLCoAttnImageProcessor",
    "VLCoAttnModel",
    "VLCoAttnPreTrainedModel",
    "VLCoAttnProcessor",
    "VisionBackbone",
    "__version__",
    "efficientnet_lite0_timm_file",
    "gaussian_log_prior",
    "grounding_loss",
    "prior_heatmaps",
]
