"""The text-only tasks: sequence classification (``cls``) and causal language modelling (``lm``).

=============  ============================  ===================================================
task           model                         targets passed to forward()
=============  ============================  ===================================================
cls            *ForSequenceClassification    labels (class index; -100 on other rows)
lm             *ForCausalLM                  labels = input_ids with padding -100
=============  ============================  ===================================================

A classifier's loss averages over its labelled rows, an LM's over its target tokens (every token after
the first). Evaluation gives accuracy and macro-F1, or perplexity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import IGNORE_INDEX as IGNORE
from .spec import Batch, TaskSpec, register_task

CLS, LM = "cls", "lm"


# ----------------------------------------------------------------------------- classification


def _check_label(collator, sample: dict) -> None:
    if sample.get("label") not in collator.label_index:
        from ..data.schema import SampleError

        raise SampleError("bad_field", f"label {sample.get('label')!r} is not in the label vocabulary")


def _collate_labels(collator, samples, enc: Batch) -> Batch:
    return {"labels": torch.tensor([collator.label_index[s["label"]] if s["task"] == CLS else IGNORE for s in samples])}


def _label_config(answer_vocab, label_vocab) -> dict:
    if len(label_vocab) < 2:
        raise ValueError(f"classification needs at least 2 labels in the data, got {list(label_vocab)}")
    return {"num_labels": len(label_vocab), "id2label": dict(enumerate(label_vocab)),
            "label2id": {label: i for i, label in enumerate(label_vocab)}}


def _saved_labels(config) -> list[str]:
    id2label = getattr(config, "id2label", None)
    return [id2label[i] for i in range(len(id2label))] if id2label else []


def _score_classes(model, out, batch: Batch, inputs: dict, acc, rows: list[dict]) -> None:
    pred_ids = out.logits.argmax(-1).cpu()
    acc.add_class(pred_ids, batch["labels"])
    labels = model.config.id2label
    for row, p, y in zip(rows, pred_ids.tolist(), batch["labels"].tolist()):
        row.update(label=labels[y], pred_label=labels[p])


register_task(TaskSpec(
    name=CLS, model_class="vlcoattn.text:CooBertForSequenceClassification",
    predictor="vlcoattn.infer.predictor:ClassifierPredictor", aliases=("classify",),
    requires=("label", "bad_field", "task 'cls' needs a 'label'"),
    check_sample=_check_label, collate=_collate_labels, batch_keys=("labels",),
    targets=lambda batch: {"labels": batch["labels"]},
    count_items=lambda batch: int((batch["labels"] != IGNORE).sum()),
    head_config=_label_config, saved_labels=_saved_labels,
    metric_options=lambda model: {"num_classes": getattr(getattr(model, "config", None), "num_labels", None)},
    score=_score_classes,
    hub_pipeline_tag="text-classification", headline_metrics=("accuracy", "macro_f1"),
    summary="gives a text one of the labels of its training data",
    usage="""classify = pipeline("text-classification", model=model_dir)
print(classify("Shares in the bank fell today."))  # [{"label": ..., "score": ...}]
print(predictor.classify("Shares in the bank fell today.")["label"])""",
))


# ----------------------------------------------------------------------------- language modelling


def _collate_tokens(collator, samples, enc: Batch) -> Batch:
    """The input ids as targets (the model shifts them), padding and other tasks' rows ignored."""
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE)
    labels[torch.tensor([s["task"] != LM for s in samples])] = IGNORE
    return {"labels": labels}


def _score_tokens(model, out, batch: Batch, inputs: dict, acc, rows: list[dict]) -> None:
    """Summed next-token NLL and token counts: perplexity over the whole split, NLL per sample."""
    logits, targets = out.logits[:, :-1].float(), inputs["labels"][:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                          reduction="none")
    per_row = nll.view(targets.shape).sum(-1).cpu()
    counts = (targets != IGNORE).sum(-1).cpu()
    acc.add_lm(per_row.sum(), counts.sum())
    for row, s, c in zip(rows, per_row.tolist(), counts.tolist()):
        row.update(nll=round(s, 4), tokens=c)


register_task(TaskSpec(
    name=LM, model_class="vlcoattn.text:CooBertForCausalLM",
    predictor="vlcoattn.infer.predictor:GeneratorPredictor", aliases=("generate",),
    token_type_ids=False, from_tokenizer=True,
    collate=_collate_tokens, batch_keys=("labels",),
    targets=lambda batch: {"labels": batch["labels"]},
    count_items=lambda batch: int((batch["labels"][:, 1:] != IGNORE).sum()),
    score=_score_tokens,
    hub_pipeline_tag="text-generation", headline_metrics=("perplexity",),
    summary="continues a text (a causal language model)",
    usage="""generate = pipeline("text-generation", model=model_dir)
print(generate("The market", max_new_tokens=8)[0]["generated_text"])
print(predictor.generate("The market", max_new_tokens=8)["completion"])""",
))
