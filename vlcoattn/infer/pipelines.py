"""transformers pipelines for VLCoAttn models, registered on ``import vlcoattn``.

transformers 5 removed its ``visual-question-answering`` task, so the two tasks live under our names::

    import vlcoattn
    from transformers import pipeline

    vqa = pipeline("vlcoattn-vqa", model="runs/demo/final")
    vqa(image, "what color is the cube?", top_k=3)       # [{"answer": "red", "score": 0.93}, ...]
    ground = pipeline("vlcoattn-grounding", model="runs/demo/final")
    ground(image, "the red cube")                        # {"box": [x0, y0, x1, y1], "heatmaps": [...]}

An image is a PIL image, a uint8 array, a path or encoded bytes. Several inputs go as a list of
``{"image": ..., "text": ...}`` dicts, batched by the pipeline's ``batch_size``. Preprocessing is the
model's saved :class:`~vlcoattn.models.VLCoAttnProcessor`; answers and boxes are post-processed by
the same functions as :class:`~vlcoattn.infer.Predictor`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from ..loading import model_class
from ..models import VLCoAttnForGrounding, VLCoAttnForMultitask, VLCoAttnForQuestionAnswering
from .predictor import token_words, top_answers

__all__ = ["SavedVLCoAttnModel", "VLCoAttnGroundingPipeline", "VLCoAttnVQAPipeline"]


class SavedVLCoAttnModel:
    """What ``pipeline(..., model=dir)`` loads with: the VLCoAttn class the dir's config.json names, so a
    multitask model keeps both heads whichever of the two pipelines loads it."""

    @classmethod
    def from_pretrained(cls, model_dir: str, **kwargs: Any) -> Any:
        return model_class(model_dir).from_pretrained(model_dir, **kwargs)


class _VLCoAttnPipeline(Pipeline):
    """Shared input handling: ``pipe(image, text)``, ``pipe({"image", "text"})`` or a list of dicts."""

    _load_processor = True
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False
    text_key = "text"

    def __call__(self, image: Any, text: str | None = None, **kwargs: Any) -> Any:
        inputs = {"image": image, "text": text} if text is not None else image
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(inputs, dict) or not {"image", "text"} <= inputs.keys():
            raise ValueError("give an image and a text: pipe(image, text) or pipe({'image': ..., 'text': ...})")
        if not isinstance(inputs["text"], str) or not inputs["text"].strip():
            raise ValueError(f"the text must be a non-empty string, got {inputs['text']!r}")
        return {**self.processor(images=inputs["image"], text=inputs["text"]), "text": inputs["text"]}

    def _model_inputs(self, model_inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
        return {k: model_inputs[k].to(self.device) for k in keys}


class VLCoAttnVQAPipeline(_VLCoAttnPipeline):
    """Image + question -> the ``top_k`` answers with their scores (sigmoid or softmax probabilities, as
    the model was trained: ``heads_config.answer_loss``)."""

    def _sanitize_parameters(self, top_k: int | None = None, **kwargs: Any):
        return {}, {}, ({"top_k": top_k} if top_k is not None else {})

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        out = self.model(**self._model_inputs(model_inputs))
        return {"logits": out.logits}

    def postprocess(self, model_outputs: dict[str, Any], top_k: int = 5) -> list[dict[str, Any]]:
        probs = self.model.answer_probabilities(model_outputs["logits"].float())[0]
        return top_answers(probs.cpu(), top_k, self.model.config.answer_vocab, score="score")


class VLCoAttnGroundingPipeline(_VLCoAttnPipeline):
    """Image + referring expression -> ``{"box": [x0, y0, x1, y1]}`` in pixels of the original image, and
    ``heatmaps``: every text token's spatial prior on the feature grid of the letterboxed canvas
    (``[{"token", "word", "heatmap": (H, W) tensor summing to 1}]``; none without a prior). The box
    head regresses one box per expression: there is no confidence score to report."""

    def _sanitize_parameters(self, **kwargs: Any):
        return {}, {}, {}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        out = self.model(**self._model_inputs(model_inputs))
        return {"pred_boxes": out.pred_boxes, "heatmaps": out.heatmaps, "letterbox": model_inputs["letterbox"],
                "input_ids": model_inputs["input_ids"], "attention_mask": model_inputs["attention_mask"],
                "text": model_inputs["text"]}

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any]:
        box = self.processor.post_process_grounding(model_outputs, letterbox=model_outputs["letterbox"])[0]["box"]
        result: dict[str, Any] = {"box": [round(v, 2) for v in box.tolist()], "heatmaps": []}
        if model_outputs["heatmaps"] is not None:
            n = int(model_outputs["attention_mask"][0].sum())
            ids = model_outputs["input_ids"][0, :n].tolist()
            text = model_outputs["text"]
            text = text[0] if isinstance(text, list) else text
            words = token_words(self.tokenizer, text, self.processor.max_text_len)["words"]
            special = set(self.tokenizer.all_special_ids)
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            result["heatmaps"] = [
                {"token": piece, "word": words[t], "heatmap": model_outputs["heatmaps"][0, t].float().cpu()}
                for t, (i, piece) in enumerate(zip(ids, pieces)) if i not in special
            ]
        return result


PIPELINE_REGISTRY.register_pipeline(
    "vlcoattn-vqa", pipeline_class=VLCoAttnVQAPipeline,
    pt_model=(SavedVLCoAttnModel, VLCoAttnForQuestionAnswering, VLCoAttnForMultitask), type="multimodal",
)
PIPELINE_REGISTRY.register_pipeline(
    "vlcoattn-grounding", pipeline_class=VLCoAttnGroundingPipeline,
    pt_model=(SavedVLCoAttnModel, VLCoAttnForGrounding, VLCoAttnForMultitask), type="multimodal",
)
