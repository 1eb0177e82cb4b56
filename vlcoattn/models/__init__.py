"""VLCoAttn vision-language models (config, base model, VQA and grounding heads), Auto-registered."""

from transformers import AutoConfig, AutoModel, AutoModelForVisualQuestionAnswering

from .configuration_vlcoattn import VQA_LOSSES, VLCoAttnConfig
from .modeling_vlcoattn import (
    AnswerHead,
    BoxHead,
    VLCoAttnForGrounding,
    VLCoAttnForMultitask,
    VLCoAttnForQuestionAnswering,
    VLCoAttnGroundingOutput,
    VLCoAttnModel,
    VLCoAttnModelOutput,
    VLCoAttnMultitaskOutput,
    VLCoAttnPreTrainedModel,
    VLCoAttnQuestionAnsweringOutput,
    answer_loss,
    grounding_loss,
    prior_heatmaps,
)

AutoConfig.register(VLCoAttnConfig.model_type, VLCoAttnConfig, exist_ok=True)
AutoModel.register(VLCoAttnConfig, VLCoAttnModel, exist_ok=True)
AutoModelForVisualQuestionAnswering.register(VLCoAttnConfig, VLCoAttnForQuestionAnswering, exist_ok=True)

__all__ = [
    "VQA_LOSSES",
    "AnswerHead",
    "BoxHead",
    "VLCoAttnConfig",
    "VLCoAttnForGrounding",
    "VLCoAttnForMultitask",
    "VLCoAttnForQuestionAnswering",
    "VLCoAttnGroundingOutput",
    "VLCoAttnModel",
    "VLCoAttnModelOutput",
    "VLCoAttnMultitaskOutput",
    "VLCoAttnPreTrainedModel",
    "VLCoAttnQuestionAnsweringOutput",
    "answer_loss",
    "grounding_loss",
    "prior_heatmaps",
]
