"""Phrase grounding (``phrase``, alias ``phrase_grounding``): a box for every phrase of a caption.

=================  ==========================  ================================================
task               model                       targets passed to forward()
=================  ==========================  ================================================
phrase             VLCoAttnForPhraseGrounding  phrase_tokens, phrase_boxes, phrase_mask, phrase_rows
vqa+ground+phrase  VLCoAttnForPhraseMultitask  those of vqa, ground and phrase (a batch may mix all three)
=================  ==========================  ================================================

A sample is an image, a caption and its ``phrases`` (character spans with their boxes, see
docs/data.md). The collator maps each span onto the tokens whose characters it covers (the fast
tokenizer's offsets, on the text as the transform left it: a flip has moved the spans already), so
``phrase_tokens`` (B, P, T) says which tokens name which phrase; this is also what a loss on the
tokens' priors reads. The target of a phrase with several boxes ("two men") is the box enclosing them
all (Flickr30k's Merged-Box); phrases without a box, or whose tokens the text length cut off, are not
trained (``phrase_mask``). When the priors' supervision is on, ``phrase_mask`` covers the phrases of
every row, whatever its task: ``phrase_rows`` (the phrase task's rows) keeps the phrase box loss, and its
count (``"phrase"`` items), on the captions' phrases. Evaluation gives Recall@1 under both Flickr30k Entities protocols, per phrase
type (:mod:`vlcoattn.eval.phrase_grounding`); the baselines are the whole image and the centred mean
phrase box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .spec import Batch, TaskSpec, register_task, rows_of
from .vision import GROUND_TASK, VQA_TASK

PHRASE = "phrase"
PREDICTOR = "vlcoattn.infer.predictor:PhrasePredictor"
PHRASES_USAGE = ("phrases: a list of substrings of the caption (its first occurrence), "
                 "{'phrase': str, 'occurrence': k} (the k-th, from 0), or character spans [start, end]")


def span_token_mask(offsets: torch.Tensor, spans: Sequence[Sequence[int]]) -> torch.Tensor:
    """bool (P, T): token t belongs to span p = [start, end) when its characters overlap the span.
    ``offsets`` (T, 2) are a fast tokenizer's character offsets; special and padding tokens, (0, 0),
    belong to none. A span cut off by truncation covers no token."""
    if len(spans) == 0:
        return torch.zeros(0, len(offsets), dtype=torch.bool)
    span = torch.as_tensor(spans, dtype=torch.long).reshape(-1, 1, 2)  # (P, 1, 2)
    start, end = offsets[:, 0], offsets[:, 1]  # (T,)
    real = end > start
    return real & (start < span[..., 1]) & (end > span[..., 0])  # (P, T)


def _phrase_span(caption: str, phrase) -> tuple[int, int]:
    """[start, end) of one phrase in ``caption``: see :data:`PHRASES_USAGE` (a data row's
    ``{"span": [start, end], ...}`` is a span too)."""
    if isinstance(phrase, dict) and "span" in phrase:
        phrase = phrase["span"]
    if (isinstance(phrase, dict) and set(phrase) <= {"phrase", "occurrence"} and isinstance(phrase.get("phrase"), str)
            and type(phrase.get("occurrence", 0)) is int and phrase.get("occurrence", 0) >= 0):
        text, k = phrase["phrase"], phrase.get("occurrence", 0)
    elif isinstance(phrase, str):
        text, k = phrase, 0
    elif (isinstance(phrase, (list, tuple)) and len(phrase) == 2 and all(type(v) is int for v in phrase)
          and 0 <= phrase[0] < phrase[1] <= len(caption)):
        return phrase[0], phrase[1]
    else:
        raise ValueError(f"bad phrase {phrase!r} for a caption of {len(caption)} characters; {PHRASES_USAGE}")
    start = -1
    for _ in range(k + 1):
        start = caption.find(text, start + 1) if text.strip() else -1
        if start < 0:
            raise ValueError(f"phrase {text!r} (occurrence {k}) is not in the caption {caption!r}")
    return start, start + len(text)


def resolve_phrases(caption: str, phrases: Sequence) -> list[tuple[int, int]]:
    """The character spans [start, end) of ``phrases`` in ``caption`` (one clear ValueError for a phrase
    that is not in it, or for no phrases)."""
    if isinstance(phrases, (str, dict)) or not isinstance(phrases, Sequence) or len(phrases) == 0:
        raise ValueError(f"task 'phrase' needs a non-empty list of phrases, got {phrases!r}; {PHRASES_USAGE}")
    return [_phrase_span(caption, p) for p in phrases]


def phrase_token_mask(tokenizer, texts: Sequence[str], spans: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """bool (B, P, T): the tokens of every caption's phrases as the collator maps them (:func:`span_token_mask`
    on the tokenization the model gets), padded with empty phrases to the most phrases (P). A phrase the
    text length cut off is a ValueError: the model would have nothing to box it from."""
    from ..data.read.pipeline import tokenize

    offsets = tokenize(tokenizer, list(texts), offsets=True)["offset_mapping"]  # (B, T, 2)
    mask = torch.zeros(len(texts), max(len(s) for s in spans), offsets.shape[1], dtype=torch.bool)
    for i, (text, row) in enumerate(zip(texts, spans)):
        mask[i, :len(row)] = span_token_mask(offsets[i], row)
        for (start, end), tokens in zip(row, mask[i]):
            if not tokens.any():
                raise ValueError(f"phrase {text[start:end]!r} lies past the model's {tokenizer.model_max_length} "
                                 "text tokens: shorten the caption")
    return mask


def merged_target(boxes: torch.Tensor) -> torch.Tensor:
    """(K >= 1, 4) normalized cxcywh -> (4,): the box enclosing all K, the training target of a phrase."""
    from torchvision.ops import box_convert

    from ..eval.phrase_grounding import merge_boxes

    return box_convert(merge_boxes(box_convert(boxes.reshape(-1, 4), "cxcywh", "xyxy")), "xyxy", "cxcywh")


def collate_phrase_spans(collator, samples, enc: Batch) -> Batch:
    """Every row's phrases, padded to the batch's most (P): their tokens (B, P, T), their merged target
    boxes (B, P, 4) and which of them train (B, P): the phrases with a box and a token of phrase rows or,
    when the loader is asked for phrase spans (``collator.phrase_spans``: the priors' supervision reads
    them), of every row. The phrase task's collate step, and the loader's for every task in that mode."""
    from ..data.read.pipeline import tokenize

    B, T = enc["input_ids"].shape
    P = max([len(s.get("phrases", ())) for s in samples] + [1])
    tokens = torch.zeros(B, P, T, dtype=torch.bool)
    boxes = torch.zeros(B, P, 4)
    mask = torch.zeros(B, P, dtype=torch.bool)
    offsets = tokenize(collator.tokenizer, [s["text"] for s in samples], offsets=True)["offset_mapping"]  # (B, T, 2)
    for i, s in enumerate(samples):
        phrases = s.get("phrases", [])
        tokens[i, :len(phrases)] = span_token_mask(offsets[i], [p["span"] for p in phrases])
        for j, p in enumerate(phrases):
            if (s["task"] == PHRASE or collator.phrase_spans) and len(p["boxes"]) and bool(tokens[i, j].any()):
                boxes[i, j], mask[i, j] = merged_target(p["boxes"]), True
    return {"phrase_tokens": tokens, "phrase_boxes": boxes, "phrase_mask": mask}


def _phrase_targets(batch: Batch) -> dict:
    """The phrase spans, and the rows whose phrases train the phrase box head (``phrase_rows``)."""
    if "phrase_mask" not in batch:
        return {}
    return {**{k: batch[k] for k in ("phrase_tokens", "phrase_boxes", "phrase_mask")},
            "phrase_rows": rows_of(batch, PHRASE)}


def _count_phrases(batch: Batch) -> int:
    """The phrases the phrase box loss trains on: those of ``phrase_mask`` in the phrase task's rows."""
    if "phrase_mask" not in batch:
        return 0
    return int((batch["phrase_mask"] & rows_of(batch, PHRASE)[:, None]).sum())


def _phrase_boxes(model, out) -> torch.Tensor | None:
    """The phrase boxes (B, P, 4) of a model's output: the field its ``phrase_boxes_output`` names (None when
    the model has no phrase head, or was called without phrases)."""
    field = getattr(model, "phrase_boxes_output", None)
    return getattr(out, field, None) if field else None


def _score_phrase(model, out, batch: Batch, inputs: dict, acc, rows: list[dict]) -> None:
    """Recall@1 of every phrase of the phrase rows, in original-image pixels; each row gets its phrases'
    predicted boxes and hits."""
    from ..data.read.transforms import invert_boxes
    from ..data.schema import phrase_types

    pred = _phrase_boxes(model, out)
    if pred is None:
        return
    pred = pred.float().cpu()  # (B, P, 4)
    for i, row in enumerate(rows):
        if batch["tasks"][i] != PHRASE:
            continue
        lb, found = batch["letterbox"][i], []
        for j, phrase in enumerate(batch["phrases"][i]):
            box = invert_boxes(pred[i, j], lb)
            truth = invert_boxes(phrase["boxes"], lb)  # (K, 4), K = 0 for a phrase without a box
            hits = acc.phrases.add(box, truth, phrase_types(phrase))
            found.append({"span": list(phrase["span"]), "box": [round(v, 2) for v in box.tolist()],
                          **({"hit": hits} if hits is not None else {})})
        row.update(phrases=found)


def _predict_phrases(model, out, image_processor, letterbox, top_k: int, *, phrase_tokens: torch.Tensor,
                     spans: Sequence[Sequence[tuple[int, int]]], texts: Sequence[str]) -> list[dict]:
    """Every phrase's box in original pixels and its score (the share of its prior inside the box, see
    :meth:`~vlcoattn.models.VLCoAttnImageProcessor.post_process_phrase_grounding`) and its token indices."""
    outputs = {"pred_boxes": _phrase_boxes(model, out), "heatmaps": out.heatmaps}
    boxes, scores = image_processor.post_process_phrase_grounding(outputs, phrase_tokens, letterbox)
    rows = []
    for i, (row, text) in enumerate(zip(spans, texts)):
        rows.append({"phrases": [
            {"text": text[s:e], "span": [s, e], "box": [round(v, 2) for v in boxes[i, j].tolist()],
             "score": None if scores is None else round(float(scores[i, j]), 4),
             "token_indices": phrase_tokens[i, j].nonzero().flatten().tolist()}
            for j, (s, e) in enumerate(row)]})
    return rows


def _phrase_baselines(sources, loader) -> list:
    """The whole image, and the mean training phrase box (merged, up to 2,048 samples) centred."""
    from ..eval.baselines import PhraseBoxBaseline, phrase_box_size

    size = phrase_box_size(loader(batch_size=64, limit=2048), PHRASE)
    return [lambda: PhraseBoxBaseline(PHRASE), lambda: PhraseBoxBaseline(PHRASE, size)]


PHRASE_TASK = register_task(TaskSpec(
    name=PHRASE, model_class="vlcoattn.models:VLCoAttnForPhraseGrounding", predictor=PREDICTOR,
    needs_images=True, aliases=("phrase_grounding",), predict_inputs=("phrases",),
    requires=("phrases", "bad_field", "task 'phrase' needs a non-empty 'phrases' list"),
    collate=collate_phrase_spans, batch_keys=("phrase_tokens", "phrase_boxes", "phrase_mask"),
    targets=_phrase_targets, count_items=_count_phrases, score=_score_phrase, baselines=_phrase_baselines,
    predict=_predict_phrases,
    hub_pipeline_tag="zero-shot-object-detection", headline_metrics=("recall@1_any", "recall@1_merged"),
    summary="finds a box for every phrase of a caption (Flickr30k Entities-style phrase grounding)",
    usage="""ground = pipeline("vlcoattn-phrase-grounding", model=model_dir)
caption = "a small red square left of a large blue circle"
print(ground(image, caption, phrases=["a small red square", "a large blue circle"]))  # scores, boxes, text_labels
print(predictor.predict(image, caption, phrases=["a small red square"])["phrases"])""",
))

register_task(TaskSpec(
    name=f"{VQA_TASK.name}+{GROUND_TASK.name}+{PHRASE}", model_class="vlcoattn.models:VLCoAttnForPhraseMultitask",
    predictor=PREDICTOR, needs_images=True, parts=(VQA_TASK, GROUND_TASK, PHRASE_TASK),
))
