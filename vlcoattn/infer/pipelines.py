"""transformers pipelines for VLCoAttn models, registered on ``import vlcoattn``.

transformers 5 removed its ``visual-question-answering`` task, so the two tasks live under our names::

    import vlcoattn
    from transformers import pipeline

    vqa = pipeline("vlcoattn-vqa", model="runs/demo/final")
    vqa(image, "what color is the cube?", top_k=3)       # [{"answer": "red", "score": 0.93}, ...]
    vqa(image=image, question="what color is the cube?")  # transformers' VQA pipeline's call shapes
    ground = pipeline("vlcoattn-grounding", model="runs/demo/final")
    ground(image, "the red cube")                        # {"box": [x0, y0, x1, y1], "heatmaps": [...]}
    phrases = pipeline("vlcoattn-phrase-grounding", model="runs/phrase/final")
    phrases(image, "a red cube left of a blue ball", phrases=["a red cube", "a blue ball"])
    # {"scores": [...], "boxes": [[x0, y0, x1, y1], ...], "text_labels": [...], "labels": [...], "spans": [...]}

An image is a PIL image, a uint8 array, a path or encoded bytes. The text comes second or by keyword
(``text=``; the VQA pipeline also takes ``question=``, as transformers' own), or the pair is one dict
(``{"image": ..., "text": ...}``, or ``"question"`` for VQA). Several inputs go as a list of such dicts,
as a list of images with one text, or as one image with a list of texts, batched by the pipeline's
``batch_size``. The phrase grounding pipeline also takes the caption's ``phrases=`` (or a ``"phrases"``
key in each dict). Preprocessing is the model's saved :class:`~vlcoattn.models.VLCoAttnProcessor`;
answers and boxes are post-processed by the same functions as :class:`~vlcoattn.infer.Predictor`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from ..loading import model_class
from ..models import (
    VLCoAttnForGrounding,
    VLCoAttnForMultitask,
    VLCoAttnForPhraseGrounding,
    VLCoAttnForPhraseMultitask,
    VLCoAttnForQuestionAnswering,
)
from ..tasks.phrase import PHRASES_USAGE, phrase_token_mask, resolve_phrases
from .predictor import token_words, top_answers

__all__ = ["SavedVLCoAttnModel", "VLCoAttnGroundingPipeline", "VLCoAttnPhraseGroundingPipeline", "VLCoAttnVQAPipeline"]


class SavedVLCoAttnModel:
    """What ``pipeline(..., model=dir)`` loads with: the VLCoAttn class the dir's config.json names, so a
    multitask model keeps both heads whichever of the two pipelines loads it."""

    @classmethod
    def from_pretrained(cls, model_dir: str, **kwargs: Any) -> Any:
        return model_class(model_dir).from_pretrained(model_dir, **kwargs)


class _VLCoAttnPipeline(Pipeline):
    """Shared input handling: an image and a text, given as described in the module docstring; every pair
    reaches :meth:`preprocess` as ``{"image", "text"}``, anything else is one ``ValueError``."""

    _load_processor = True
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False
    text_keys: tuple[str, ...] = ("text",)  # the names the text goes by, in a call and in a dict
    input_keys: tuple[str, ...] = ()  # further keys an input dict must carry (the phrases)

    @property
    def usage(self) -> str:
        key = self.text_keys[0]
        also = f" ({' or '.join(repr(k) for k in self.text_keys[1:])} also names the text)" if self.text_keys[1:] else ""
        return (f"give an image and a {key}: pipe(image, {key}), pipe(image=..., {key}=...), "
                f"pipe({{'image': ..., '{key}': ...}}) or a list of such dicts{also}")

    def __call__(self, image: Any = None, text: str | list[str] | None = None, **kwargs: Any) -> Any:
        named = {k: kwargs.pop(k) for k in self.text_keys if k in kwargs}  # text= / question= by keyword
        if text is not None:
            named["text"] = text
        if image is None or len(named) > 1:
            raise ValueError(self.usage)
        if not named:  # a dict, or a list of dicts
            return super().__call__(image, **kwargs)
        (text,) = named.values()
        if isinstance(text, list) and not isinstance(image, list):  # one image, several texts
            return super().__call__([{"image": image, "text": t} for t in text], **kwargs)
        if isinstance(text, list):
            raise ValueError(f"{self.usage}; a list of images takes one text")
        if isinstance(image, list):  # several images, one text
            return super().__call__([{"image": im, "text": text} for im in image], **kwargs)
        return super().__call__({"image": image, "text": text}, **kwargs)

    def pair(self, inputs: Any) -> tuple[Any, str]:
        """(image, text) of one input dict: ``"image"`` and exactly one of :attr:`text_keys`."""
        if not isinstance(inputs, dict):
            raise ValueError(f"{self.usage}; got {type(inputs).__name__}")
        names = [k for k in self.text_keys if k in inputs]
        extra = sorted(set(inputs) - {"image", *self.text_keys, *self.input_keys})
        if "image" not in inputs or len(names) != 1 or extra or not set(self.input_keys) <= set(inputs):
            raise ValueError(f"{self.usage}; got the keys {sorted(inputs)}")
        text = inputs[names[0]]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the {names[0]} must be a non-empty string, got {text!r}")
        return inputs["image"], text

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, Any]:
        image, text = self.pair(inputs)
        return {**self.processor(images=image, text=text), "text": text}

    def _sanitize_parameters(self, **kwargs: Any):
        if kwargs:
            raise ValueError(f"{type(self).__name__} got unexpected argument(s) {sorted(kwargs)}; {self.usage}")
        return {}, {}, {}

    def _model_inputs(self, model_inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
        return {k: model_inputs[k].to(self.device) for k in keys}


class VLCoAttnVQAPipeline(_VLCoAttnPipeline):
    """Image + question -> the ``top_k`` answers with their scores (sigmoid or softmax probabilities, as
    the model was trained: ``heads_config.answer_loss``)."""

    text_keys = ("question", "text")

    def _sanitize_parameters(self, top_k: int | None = None, **kwargs: Any):
        super()._sanitize_parameters(**kwargs)
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


class VLCoAttnPhraseGroundingPipeline(_VLCoAttnPipeline):
    """Image + caption + its phrases -> a box and a score per phrase, in the shape of transformers' Grounding
    DINO post-processing: ``{"scores", "boxes", "text_labels", "labels"}`` (one entry per phrase, in the
    order given; boxes (x0, y0, x1, y1) in pixels of the original image) plus each phrase's character
    ``spans``. A score is the share of the phrase's prior inside its box (see
    :meth:`~vlcoattn.models.VLCoAttnProcessor.post_process_phrase_grounding`)."""

    input_keys = ("phrases",)

    @property
    def usage(self) -> str:
        return ("give an image, a caption and its phrases: pipe(image, caption, phrases=[...]), "
                "pipe(image=..., text=..., phrases=[...]) or a list of {'image', 'text', 'phrases'} dicts; "
                + PHRASES_USAGE)

    def __call__(self, image: Any = None, text: str | None = None, phrases: list | None = None, **kwargs: Any) -> Any:
        text = kwargs.pop("text", text)
        if phrases is None:  # a dict, or a list of dicts, carrying their phrases
            if text is not None:
                raise ValueError(self.usage)
            return super().__call__(image, **kwargs)
        if image is None or isinstance(image, list) or not isinstance(text, str):
            raise ValueError(f"{self.usage}; phrases= goes with one image and one caption")
        return super().__call__({"image": image, "text": text, "phrases": phrases}, **kwargs)

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, Any]:
        image, text = self.pair(inputs)
        spans = resolve_phrases(text, inputs["phrases"])
        phrase_token_mask(self.tokenizer, [text], [spans])  # a phrase past the text length: its error, here
        return {**self.processor(images=image, text=text), "text": text, "spans": spans,
                "text_labels": [text[s:e] for s, e in spans]}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        texts, spans = model_inputs["text"], model_inputs["spans"]
        if isinstance(texts, str):  # one input (a batch of them: lists)
            texts, spans = [texts], [spans]
        tokens = phrase_token_mask(self.tokenizer, texts, spans)  # on the batch's tokens, as padded together
        out = self.model(**self._model_inputs(model_inputs), phrase_tokens=tokens.to(self.device))
        boxes = getattr(out, self.model.phrase_boxes_output)  # (B, P, 4): a phrase model's pred_boxes, a multitask one's
        return {"pred_boxes": boxes, "heatmaps": out.heatmaps, "phrase_tokens": tokens,
                **{k: model_inputs[k] for k in ("letterbox", "spans", "text_labels")}}

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any]:
        labels = model_outputs["text_labels"]
        result = self.processor.post_process_phrase_grounding(
            model_outputs, model_outputs["phrase_tokens"], letterbox=model_outputs["letterbox"], text_labels=[labels])[0]
        return {"scores": [round(float(v), 4) for v in result["scores"]],
                "boxes": [[round(v, 2) for v in box] for box in result["boxes"].tolist()],
                "text_labels": result["text_labels"], "labels": result["labels"],
                "spans": [list(span) for span in model_outputs["spans"]]}


PIPELINE_REGISTRY.register_pipeline(
    "vlcoattn-vqa", pipeline_class=VLCoAttnVQAPipeline,
    pt_model=(SavedVLCoAttnModel, VLCoAttnForQuestionAnswering, VLCoAttnForMultitask), type="multimodal",
)
PIPELINE_REGISTRY.register_pipeline(
    "vlcoattn-grounding", pipeline_class=VLCoAttnGroundingPipeline,
    pt_model=(SavedVLCoAttnModel, VLCoAttnForGrounding, VLCoAttnForMultitask), type="multimodal",
)
PIPELINE_REGISTRY.register_pipeline(
    "vlcoattn-phrase-grounding", pipeline_class=VLCoAttnPhraseGroundingPipeline,
    pt_model=(SavedVLCoAttnModel, VLCoAttnForPhraseGrounding, VLCoAttnForPhraseMultitask), type="multimodal",
)
