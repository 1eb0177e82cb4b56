"""Phrase grounding trained together with VQA and grounding (``vqa+ground+phrase``): the combined model's
losses are the single heads' losses, the phrase loss keeps to the caption rows while the priors'
supervision reads every row, batches count the right items, and a tiny CLEVR-lite run with captions
is scored, saved, reloaded and served for all three tasks."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlcoattn.data.read.loader import read_shard
from vlcoattn.data.read.pipeline import Collator
from vlcoattn.models import (
    VLCoAttnForGrounding,
    VLCoAttnForMultitask,
    VLCoAttnForPhraseGrounding,
    VLCoAttnForPhraseMultitask,
    VLCoAttnForQuestionAnswering,
)
from vlcoattn.tasks import get_task, task_of_model

from helpers import batch, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread on the shared cores

ANSWERS = ["yes", "no", "red"]
TASK = "vqa+ground+phrase"


def _combined(**kw) -> VLCoAttnForPhraseMultitask:
    torch.manual_seed(0)
    return VLCoAttnForPhraseMultitask(tiny_config(heads_config=dict(answer_vocab=ANSWERS), **kw)).eval()


def _single(cls, combined: VLCoAttnForPhraseMultitask):
    """A single-task model holding the combined model's weights (the phrase model's box head is the phrase
    head)."""
    model = cls(combined.config).eval()
    state = combined.state_dict()
    if cls is VLCoAttnForPhraseGrounding:
        state = {k.replace("phrase_head.", "box_head."): v for k, v in state.items() if not k.startswith("box_head.")}
    missing, _ = model.load_state_dict(state, strict=False)
    assert not missing, missing
    return model


def _mixed_targets() -> dict:
    """Row 0 a VQA row, row 1 a grounding row, row 2 a caption: every row has phrase spans with boxes (as
    the loader gives them for the supervision), only row 2's are the phrase task's."""
    tokens = torch.zeros(3, 2, 6, dtype=torch.bool)
    tokens[0, 0, 1:3] = tokens[1, 0, 2] = tokens[1, 1, 3:5] = tokens[2, 0, 1:3] = tokens[2, 1, 4] = True
    g = torch.Generator().manual_seed(3)
    boxes = torch.cat([torch.rand(3, 2, 2, generator=g) * 0.5 + 0.25, torch.rand(3, 2, 2, generator=g) * 0.3 + 0.1], -1)
    return {
        "labels": torch.tensor([[0.0, 1.0, 0.3], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        "answer_mask": torch.tensor([True, False, False]),
        "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1], [0.3, 0.6, 0.2, 0.3], [0.5, 0.5, 0.1, 0.1]]),
        "box_mask": torch.tensor([False, True, False]),
        "phrase_tokens": tokens, "phrase_boxes": boxes, "phrase_mask": tokens.any(-1),
        "phrase_rows": torch.tensor([False, False, True]),
    }


def test_the_combined_losses_are_the_single_heads_losses_on_their_own_rows():
    model = _combined()
    ids, pixels = batch(B=3, T=6)
    t = _mixed_targets()
    out = model(ids, pixels, **t)
    vqa = _single(VLCoAttnForQuestionAnswering, model)(ids, pixels, labels=t["labels"], answer_mask=t["answer_mask"])
    ground = _single(VLCoAttnForGrounding, model)(ids, pixels, boxes=t["boxes"], box_mask=t["box_mask"])
    caption_phrases = t["phrase_mask"] & t["phrase_rows"][:, None]  # the phrase model sees only the caption's
    phrase = _single(VLCoAttnForPhraseGrounding, model)(ids, pixels, phrase_tokens=t["phrase_tokens"],
                                                        phrase_boxes=t["phrase_boxes"], phrase_mask=caption_phrases)
    torch.testing.assert_close(out.loss_vqa, vqa.loss)
    torch.testing.assert_close((out.loss_l1, out.loss_giou), (ground.loss_l1, ground.loss_giou))
    torch.testing.assert_close((out.loss_phrase_l1, out.loss_phrase_giou), (phrase.loss_l1, phrase.loss_giou))
    torch.testing.assert_close(out.loss, vqa.loss + ground.loss + phrase.loss)
    torch.testing.assert_close(out.pred_phrase_boxes, phrase.pred_boxes)
    torch.testing.assert_close(out.pred_boxes, ground.pred_boxes)
    # without phrase_rows every row's phrases would train the head: a different loss
    every_row = model(ids, pixels, **{k: v for k, v in t.items() if k != "phrase_rows"})
    assert not torch.allclose(every_row.loss_phrase_l1, out.loss_phrase_l1)
    # num_items_in_batch divides each loss by its own count
    halved = model(ids, pixels, **t, num_items_in_batch={"vqa": 2, "ground": 2, "phrase": 4})
    torch.testing.assert_close((halved.loss_vqa, halved.loss_l1, halved.loss_phrase_l1),
                               (vqa.loss / 2, ground.loss_l1 / 2, phrase.loss_l1 / 2))


def test_the_supervision_reads_every_row_while_the_phrase_loss_keeps_to_the_captions():
    model = _combined(coattention_config=dict(prior_supervision_weight=0.5))
    assert model.reads_phrase_spans and {"loss_phrase_l1", "loss_prior_center"} <= set(model.loss_names)
    ids, pixels = batch(B=3, T=6)
    t = _mixed_targets()
    out = model(ids, pixels, **t, num_items_in_batch={"vqa": 1, "ground": 1, "phrase": 2, "supervised_tokens": 8})
    spans = {k: t[k] for k in ("phrase_tokens", "phrase_boxes", "phrase_mask")}
    two_heads = _single(VLCoAttnForMultitask, model)(  # the same supervision, without a phrase head
        ids, pixels, labels=t["labels"], answer_mask=t["answer_mask"], boxes=t["boxes"], box_mask=t["box_mask"],
        **spans, num_items_in_batch={"vqa": 1, "ground": 1, "supervised_tokens": 8})
    caption_phrases = t["phrase_mask"] & t["phrase_rows"][:, None]
    alone = _combined(coattention_config=dict(prior_supervision_weight=0.5))(  # supervision on the captions only
        ids, pixels, **{**t, "phrase_mask": caption_phrases}, num_items_in_batch={"phrase": 2, "supervised_tokens": 8})
    torch.testing.assert_close((out.loss_prior_center, out.loss_prior_scale),
                               (two_heads.loss_prior_center, two_heads.loss_prior_scale))
    assert not torch.allclose(out.loss_prior_center, alone.loss_prior_center)  # the other rows' phrases count
    torch.testing.assert_close(out.loss_phrase_l1, alone.loss_phrase_l1)  # ... but not in the phrase loss
    torch.testing.assert_close(out.loss, two_heads.loss + 5.0 * out.loss_phrase_l1 + 2.0 * out.loss_phrase_giou)


def test_a_batch_without_phrases_gives_the_phrase_head_a_zero_loss_and_inference_needs_none():
    model = _combined().train()
    ids, pixels = batch(B=2, T=6)
    out = model(ids, pixels, labels=torch.tensor([0, 2]))
    assert out.loss_phrase_l1 == 0 and out.pred_phrase_boxes is None
    out.loss.backward()
    assert all(p.grad is not None for p in model.phrase_head.parameters())  # DDP sees every parameter
    model.eval()
    plain = model(ids, pixels)
    assert plain.loss is None and plain.logits.shape == (2, 3) and plain.pred_boxes.shape == (2, 4)


def _samples() -> list[dict]:
    image = {"pixels": torch.zeros(3, 8, 8, dtype=torch.uint8), "letterbox": torch.ones(8)}
    red = {"span": [9, 21], "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])}
    return [
        {"key": "q", "task": "vqa", "text": "is there a red square?", "answers": ["yes"], "meta": {},
         "phrases": [red], **image},
        {"key": "r", "task": "ground", "text": "the red square", "box": torch.tensor([0.3, 0.3, 0.2, 0.2]), "meta": {},
         "phrases": [{"span": [0, 14], "boxes": red["boxes"]}], **image},
        {"key": "c", "task": "phrase", "text": "a red square left of a blue circle", "meta": {}, **image,
         "phrases": [{"span": [0, 12], "boxes": red["boxes"]},
                     {"span": [21, 34], "boxes": torch.tensor([[0.7, 0.4, 0.2, 0.2]])}]},
    ]


class _Pixels:
    @staticmethod
    def normalize(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float()


@pytest.mark.parametrize("spans", [False, True], ids=["plain", "supervised"])
def test_a_mixed_batch_becomes_the_combined_inputs_and_counts(minilm_tokenizer, spans):
    spec = get_task(TASK)
    assert task_of_model(VLCoAttnForPhraseMultitask) is spec and spec.sample_tasks == ("vqa", "ground", "phrase")
    batch_ = Collator(minilm_tokenizer, _Pixels(), answer_vocab=["yes", "no"], phrase_spans=spans)(_samples())
    inputs = spec.model_inputs(batch_, "cpu")
    assert inputs["phrase_rows"].tolist() == [False, False, True]
    assert inputs["answer_mask"].tolist() == [True, False, False] and inputs["box_mask"].tolist() == [False, True, False]
    trained = [[True, False], [True, False], [True, True]] if spans else [[False, False], [False, False], [True, True]]
    assert inputs["phrase_mask"].tolist() == trained
    counts = spec.items(batch_)
    assert counts["vqa"] == 1 and counts["ground"] == 1 and counts["phrase"] == 2  # the caption's phrases only
    assert ("supervised_tokens" in counts) == spans


# ----------------------------------------------------------------------------- training, evaluation, serving


@pytest.fixture(scope="module")
def combined_run(tmp_path_factory, minilm_tokenizer):
    """Two steps of vqa+ground+phrase on a tiny CLEVR-lite with questions, expressions and captions."""
    import yaml

    from vlcoattn.data import write_synthetic
    from vlcoattn.data.write.synthetic import SyntheticConfig
    from vlcoattn.text import CooBertConfig, CooBertModel
    from vlcoattn.train.config import load_config
    from vlcoattn.train.job_config import JobConfig
    from vlcoattn.train.trainer import train

    root = tmp_path_factory.mktemp("phrasemulti")
    config = CooBertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64, shared_key_dim=16, max_position_embeddings=64)
    torch.manual_seed(0)
    CooBertModel(config).save_pretrained(root / "text")
    minilm_tokenizer.save_pretrained(root / "text")
    data = SyntheticConfig(image_size=64, questions_per_scene=1, refs_per_scene=1, captions=True)
    write_synthetic(root / "data", 12, seed=0, config=data, progress=False)
    cfg = {
        "task": TASK,
        "run": {"dir": str(root / "run"), "seed": 0, "log_every": 1, "progress": False},
        "model": {"text": str(root / "text"), "convert_from": None, "backbone": "convnext_atto",
                  "pretrained_backbone": False, "image_size": 64,
                  "config": {"coattention_config": {"num_layers": 1, "prior_supervision_weight": 0.1},
                             "vision_config": {"out_indices": [-2]}}},
        "data": {"train": [str(root / "data" / "train")], "val": [str(root / "data" / "val")],
                 "batch_size": 6, "eval_batch_size": 12, "max_text_len": 48, "shuffle_buffer": 8},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"steps": 2, "report": True, "report_images": 2},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(cfg))
    result = train(load_config(JobConfig, root / "job.yaml"))
    return root, result


def test_training_reports_answers_boxes_and_phrases_in_metrics_report_and_card(combined_run):
    root, result = combined_run
    run = root / "run"
    info = json.loads((root / "data" / "train" / "dataset.json").read_text())
    assert set(info["tasks"]) == {"vqa", "ground", "phrase"} and info["answer_vocab"]
    final = json.loads((run / "final_metrics.json").read_text())
    assert final == result.metrics
    val = final["val"]
    for name in ("vqa_acc", "acc@0.5", "mean_iou", "recall@1_any", "recall@1_merged"):
        assert 0 <= val[name] <= 1, name
    shards = json.loads((root / "data" / "val" / "dataset.json").read_text())["shards"]
    records = [json.loads(r["json"]) for shard in shards
               for r in read_shard(str(root / "data" / "val" / shard["file"]), 0, shard["samples"])]
    captions = [r for r in records if r["task"] == "phrase"]
    assert captions and all(r.get("phrases") for r in records)  # every kind carries phrases ...
    assert val["phrases"] == sum(len(r["phrases"]) for r in captions)  # ... the captions' alone are scored
    assert {"whole_image/recall@1_any", "center_box/recall@1_any", "center_box/acc@0.5", "answer_prior/vqa_acc"} <= set(val)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_phrase_l1" in row and "rows/phrase" in row for row in logged)
    report, card = (run / "report.md").read_text(), (run / "final" / "README.md").read_text()
    for metric in ("vqa_acc", "acc@0.5", "recall@1_any"):
        assert metric in report and metric in card, metric


def test_the_saved_combined_model_reloads_and_serves_phrases_answers_and_boxes(combined_run, capsys):
    from vlcoattn.cli.infer import main as infer_main
    from vlcoattn.export.exporter import load_for_export
    from vlcoattn.infer import Predictor
    from vlcoattn.loading import load_model_dir

    root, _ = combined_run
    final = root / "run" / "final"
    model, _, task = load_model_dir(final)
    assert type(model) is VLCoAttnForPhraseMultitask and task == TASK
    again = VLCoAttnForPhraseMultitask.from_pretrained(final).eval()
    ids, pixels = batch(B=1, T=5)
    tokens = torch.tensor([[[False, True, True, False, False]]])
    torch.testing.assert_close(again(ids, pixels, phrase_tokens=tokens).pred_phrase_boxes,
                               model(ids, pixels, phrase_tokens=tokens).pred_phrase_boxes)
    image = root / "image.png"
    Image.new("RGB", (80, 64), (200, 40, 40)).save(image)
    caption = "a small red square left of a large blue circle"
    predictor = Predictor.from_pretrained(final)
    phrases = predictor.predict(image, caption, phrases=["a small red square", "a large blue circle"], task="phrase")
    assert [p["text"] for p in phrases["phrases"]] == ["a small red square", "a large blue circle"]
    assert all(len(p["box"]) == 4 and 0 <= p["score"] <= 1 for p in phrases["phrases"])
    from transformers import pipeline

    piped = pipeline("vlcoattn-phrase-grounding", model=str(final))(image, caption, phrases=["a small red square"])
    assert piped["boxes"][0] == phrases["phrases"][0]["box"]
    assert pipeline("vlcoattn-vqa", model=str(final))(image, "is there a red square?", top_k=1)[0]["answer"]
    assert len(pipeline("vlcoattn-grounding", model=str(final))(image, "the red square")["box"]) == 4
    both = predictor.predict(image, "is there a red square?")  # auto without phrases: answers and a box
    assert both["answers"] and len(both["box"]) == 4 and "phrases" not in both
    every = predictor.predict(image, caption, phrases=["a small red square"])  # auto with phrases: all three
    assert every["answers"] and every["phrases"][0]["box"] == phrases["phrases"][0]["box"]
    with pytest.raises(ValueError, match="non-empty list of phrases"):
        predictor.predict(image, caption, task="phrase")
    capsys.readouterr()
    assert infer_main(["--model", str(final), "--image", str(image), "--text", caption,
                       "--phrase", "a small red square", "--task", "phrase"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["phrases"][0]["box"] == phrases["phrases"][0]["box"]
    with pytest.raises(ValueError, match=r"cannot export a VLCoAttnForPhraseMultitask .*phrase_tokens"):
        load_for_export(final)
