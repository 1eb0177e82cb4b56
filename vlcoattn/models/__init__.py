"""VLCoAttn vision-language models (config, base model, VQA, grounding and phrase grounding heads, and the
multitask models of several), Auto-registered."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
)

from .configuration_vlcoattn import (
    ANSWER_LOSSES,
    ANSWER_POOLINGS,
    HeadsConfig,
    VLCoAttnConfig,
    convert_flat_config,
)
from .modeling_phrase_grounding import (
    VLCoAttnForPhraseGrounding,
    VLCoAttnForPhraseMultitask,
    VLCoAttnPhraseGroundingOutput,
    VLCoAttnPhraseMultitaskOutput,
)
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
    phrase_loss,
    prior_heatmaps,
    span_means,
)
from .processing_vlcoattn import VLCoAttnImageProcessor, VLCoAttnProcessor

AutoConfig.register(VLCoAttnConfig.model_type, VLCoAttnConfig, exist_ok=True)
AutoModel.register(VLCoAttnConfig, VLCoAttnModel, exist_ok=True)
AutoModelForVisualQuestionAnswering.register(VLCoAttnConfig, VLCoAttnForQuestionAnswering, exist_ok=True)
# a box per phrase of a caption: the task of transformers' Grounding DINO
AutoModelForZeroShotObjectDetection.register(VLCoAttnConfig, VLCoAttnForPhraseGrounding, exist_ok=True)
# one class for both of transformers' image backends: it letterboxes with PIL, as the training loader does
AutoImageProcessor.register(
    VLCoAttnConfig, image_processor_classes={"pil": VLCoAttnImageProcessor, "torchvision": VLCoAttnImageProcessor},
    exist_ok=True,
)
AutoProcessor.register(VLCoAttnConfig, VLCoAttnProcessor, exist_ok=True)

__all__ = [
    "ANSWER_LOSSES",
    "ANSWER_POOLINGS",
    "AnswerHead",
    "BoxHead",
    "HeadsConfig",
    "VLCoAttnConfig",
    "VLCoAttnForGrounding",
    "VLCoAttnForMultitask",
    "VLCoAttnForPhraseGrounding",
    "VLCoAttnForPhraseMultitask",
    "VLCoAttnForQuestionAnswering",
    "VLCoAttnGroundingOutput",
    "VLCoAttnImageProcessor",
    "VLCoAttnModel",
    "VLCoAttnModelOutput",
    "VLCoAttnMultitaskOutput",
    "VLCoAttnPhraseGroundingOutput",
    "VLCoAttnPhraseMultitaskOutput",
    "VLCoAttnPreTrainedModel",
    "VLCoAttnProcessor",
    "VLCoAttnQuestionAnsweringOutput",
    "answer_loss",
    "convert_flat_config",
    "grounding_loss",
    "phrase_loss",
    "prior_heatmaps",
    "span_means",
]
