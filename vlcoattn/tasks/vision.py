"""The image-text tasks: VQA (``vqa``), grounding (``ground``) and both at once (``vqa+ground``).

=============  ============================  ===================================================
task           model                         targets passed to forward()
=============  ============================  ===================================================
vqa            VLCoAttnForQuestionAnswering  labels = answer_scores, answer_mask = VQA rows
ground         VLCoAttnForGrounding          boxes, box_mask
vqa+ground     VLCoAttnForMultitask          both of the above (a batch may mix the two)
=============  ============================  ===================================================

Each loss averages over the rows of its task (``num_items_in_batch``). Evaluation scores answers with
the official VQA accuracy and boxes by IoU in original-image pixels, both per sample type
(``meta.type``); the baselines are the image-blind answer priors and the centred mean box.
"""

from __future__ import annotations

import torch

from .spec import IGNORE_INDEX, Batch, TaskSpec, register_task, rows_of

VQA, GROUND = "vqa", "ground"
PREDICTOR = "vlcoattn.infer.predictor:VisionPredictor"


# ----------------------------------------------------------------------------- VQA


def _check_vqa(collator, sample: dict) -> None:
    if not collator.answer_index:
        from ..data.schema import SampleError

        raise SampleError("bad_field", "vqa sample but the loader has no answer vocabulary")


def _collate_vqa(collator, samples, enc: Batch) -> Batch:
    """Every answer's official VQA score (A columns), the majority answer's index, the raw answers."""
    from ..data.answers import answer_scores, majority_answer

    scores = torch.zeros(len(samples), len(collator.answer_index))
    ids = torch.full((len(samples),), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(samples):
        if s["task"] != VQA:
            continue
        for answer, score in answer_scores(s["answers"]).items():
            if answer in collator.answer_index:
                scores[i, collator.answer_index[answer]] = score
        ids[i] = collator.answer_index.get(majority_answer(s["answers"]), IGNORE_INDEX)
    answers = [s["answers"] if s["task"] == VQA else [] for s in samples]
    return {"answer_scores": scores, "answer_ids": ids, "answers": answers}


def _vqa_targets(batch: Batch) -> dict:
    return {"labels": batch["answer_scores"], "answer_mask": rows_of(batch, VQA)} if "answer_scores" in batch else {}


def _answer_vocab_config(answer_vocab, label_vocab) -> dict:
    if not answer_vocab:
        raise ValueError("the training data has no answer vocabulary (dataset.json answer_vocab): "
                         "give data.answer_vocab=FILE|SHARD_DIR, or lower data.min_answer_count")
    return {"heads_config": {"answer_vocab": list(answer_vocab)}}


def _score_vqa(model, out, batch: Batch, inputs: dict, acc, rows: list[dict]) -> None:
    from ..data.schema import sample_type

    if getattr(out, "logits", None) is None:
        return
    answers = model.predict_answers(out.logits)
    for i, row in enumerate(rows):
        if batch["tasks"][i] == VQA:
            score = acc.add_vqa(answers[i], batch["answers"][i], sample_type(batch["meta"][i]))
            row.update(answer=answers[i], answers=batch["answers"][i], score=score)


def _answer_priors(sources, loader) -> list:
    """The image-blind answer priors (most frequent answer; per question), fitted on one read."""
    import copy

    from ..data import text_records
    from ..eval.baselines import AnswerPriorBaseline

    records = [r for r in text_records(sources) if r.get("task") == VQA]
    priors = [AnswerPriorBaseline(records, by) for by in ("answer", "question")]
    return [lambda p=p: copy.deepcopy(p) for p in priors]


def _predict_answers(model, out, image_processor, letterbox, top_k: int) -> list[dict]:
    from ..infer.predictor import top_answers

    probs = model.answer_probabilities(out.logits.float())
    return [{"answers": top_answers(p, top_k, model.config.answer_vocab)} for p in probs]


VQA_TASK = register_task(TaskSpec(
    name=VQA, model_class="vlcoattn.models:VLCoAttnForQuestionAnswering", predictor=PREDICTOR, needs_images=True,
    requires=("answers", "bad_field", "task 'vqa' needs a non-empty 'answers' list"),
    check_sample=_check_vqa, collate=_collate_vqa, batch_keys=("answer_scores", "answer_ids", "answers"),
    targets=_vqa_targets, count_items=lambda batch: int(rows_of(batch, VQA).sum()),
    head_config=_answer_vocab_config, score=_score_vqa, baselines=_answer_priors, predict=_predict_answers,
    hub_pipeline_tag="visual-question-answering", headline_metrics=("vqa_acc",),
    summary="answers a question about an image with one of the answers of its training data",
    usage="""vqa = pipeline("vlcoattn-vqa", model=model_dir)
print(vqa(image, "what color is the object?", top_k=3))  # [{"answer": ..., "score": ...}, ...]
print(predictor.predict(image, "what color is the object?", task="vqa")["answers"])""",
))


# ----------------------------------------------------------------------------- grounding


def _collate_ground(collator, samples, enc: Batch) -> Batch:
    """The first box of each grounding row (cxcywh in [0, 1] of the letterboxed image) and their mask."""
    return {"boxes": torch.stack([s.get("box", torch.zeros(4)) for s in samples]),
            "box_mask": torch.tensor([s["task"] == GROUND and "box" in s for s in samples])}


def _score_ground(model, out, batch: Batch, inputs: dict, acc, rows: list[dict]) -> None:
    from ..data.read.transforms import invert_boxes
    from ..data.schema import sample_type

    if getattr(out, "pred_boxes", None) is None:
        return
    pred_px = invert_boxes(out.pred_boxes.float().cpu(), batch["letterbox"])
    for i, row in enumerate(rows):
        if batch["tasks"][i] == GROUND and bool(batch["box_mask"][i]):
            true_px = invert_boxes(batch["boxes"][i], batch["letterbox"][i])
            iou = acc.add_box(pred_px[i], true_px, sample_type(batch["meta"][i]))
            row.update(box=[round(v, 2) for v in pred_px[i].tolist()],
                       true_box=[round(v, 2) for v in true_px.tolist()], iou=round(float(iou[0]), 4))


def _center_box(sources, loader) -> list:
    """The mean training box, centred (fitted on up to 2,048 training samples)."""
    from ..eval.baselines import CenterBoxBaseline, mean_box_size

    size = mean_box_size(loader(batch_size=64, limit=2048))
    return [lambda: CenterBoxBaseline(size)]


def _predict_box(model, out, image_processor, letterbox, top_k: int) -> list[dict]:
    boxes = image_processor.post_process_grounding(out.pred_boxes, letterbox)
    return [{"box": [round(v, 2) for v in box.tolist()]} for box in boxes]


GROUND_TASK = register_task(TaskSpec(
    name=GROUND, model_class="vlcoattn.models:VLCoAttnForGrounding", predictor=PREDICTOR, needs_images=True,
    requires=("boxes", "bad_box", "task 'ground' needs at least one box in 'boxes'"),
    collate=_collate_ground, batch_keys=("boxes", "box_mask"),
    targets=lambda batch: {"boxes": batch["boxes"], "box_mask": batch["box_mask"]} if "boxes" in batch else {},
    count_items=lambda batch: int(batch["box_mask"].sum()) if "box_mask" in batch else 0,
    score=_score_ground, baselines=_center_box, predict=_predict_box,
    hub_pipeline_tag="zero-shot-object-detection", headline_metrics=("acc@0.5", "mean_iou"),
    summary="finds the box of the object that a referring expression names in an image (one box per expression)",
    usage="""ground = pipeline("vlcoattn-grounding", model=model_dir)
print(ground(image, "the object on the left")["box"])  # [x0, y0, x1, y1] in the image's pixels
print(predictor.predict(image, "the object on the left", task="ground")["box"])""",
))


# ----------------------------------------------------------------------------- both

register_task(TaskSpec(
    name=f"{VQA}+{GROUND}", model_class="vlcoattn.models:VLCoAttnForMultitask", predictor=PREDICTOR,
    needs_images=True, parts=(VQA_TASK, GROUND_TASK),
))
