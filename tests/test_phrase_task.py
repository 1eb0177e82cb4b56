"""The phrase grounding task: spans onto tokens (also after a flip), the per-phrase box model and its
loss, CLEVR-lite captions, the Flickr30k Entities command, and a tiny training scored by Recall@1."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.ops import box_convert, generalized_box_iou

from vlcoattn.data.read.loader import read_shard
from vlcoattn.data.read.pipeline import Collator, SampleDecoder
from vlcoattn.data.read.transforms import ImageTransform, letterbox_params, swap_left_right
from vlcoattn.data.write.converters.flickr30k import read_image
from vlcoattn.data.write.synthetic import SyntheticConfig, generate_scene, scene_caption
from vlcoattn.models import VLCoAttnForPhraseGrounding
from vlcoattn.tasks import get_task
from vlcoattn.tasks.phrase import merged_target

from helpers import batch, processor_for, tiny_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "flickr30k"


def _sample(text, spans, key="k0", boxes=None):
    """A decoded phrase sample (as the decoder gives it) with one box per phrase unless ``boxes`` says."""
    boxes = boxes or [torch.tensor([[0.5, 0.5, 0.2, 0.2]])] * len(spans)
    return {"key": key, "task": "phrase", "text": text, "meta": {}, "pixels": torch.zeros(3, 8, 8, dtype=torch.uint8),
            "letterbox": torch.ones(8), "phrases": [{"span": s, "boxes": b} for s, b in zip(spans, boxes)]}


def _expected_tokens(tokenizer, text, span):
    """Independent: a word-aligned span's tokens follow [CLS] and the tokens of the text before it."""
    before = len(tokenizer(text[:span[0]], add_special_tokens=False)["input_ids"])
    inside = len(tokenizer(text[span[0]:span[1]], add_special_tokens=False)["input_ids"])
    return list(range(1 + before, 1 + before + inside))


def test_spans_map_to_exactly_their_tokens_and_a_truncated_one_trains_nothing(minilm_tokenizer):
    processor = processor_for(minilm_tokenizer, 8, max_text_len=16)  # [CLS], 14 tokens, [SEP]
    collator = Collator(processor.tokenizer, processor.image_processor)
    text = "the small turquoise cuboid left of a very large and shiny pale blue circle"
    other = "a zigzagging rhombohedron beside the tiny green thing and a dot"
    spans = [(0, 26), (text.index("a very"), len(text))]
    other_spans = [(0, 25), (other.index("a dot"), len(other))]
    batch_ = collator([_sample(text, spans), _sample(other, other_spans, "k1")])
    tokens = batch_["phrase_tokens"]
    assert tokens.shape == (2, 2, batch_["input_ids"].shape[1])
    assert tokens[0, 0].nonzero().flatten().tolist() == _expected_tokens(minilm_tokenizer, text, spans[0])
    cut = _expected_tokens(minilm_tokenizer, text, spans[1])  # "circle" is past the 14 tokens
    assert cut[-1] == 15 and tokens[0, 1].nonzero().flatten().tolist() == cut[:-1]
    assert tokens[1, 0].nonzero().flatten().tolist() == _expected_tokens(minilm_tokenizer, other, other_spans[0])
    assert len(_expected_tokens(minilm_tokenizer, other, other_spans[0])) == 9  # split into word pieces
    # "a dot" lies wholly past the 14 tokens: no token, so it does not train
    assert not tokens[1, 1].any() and batch_["phrase_mask"].tolist() == [[True, True], [True, False]]
    assert get_task("phrase").items(batch_) == {"phrase": 3}


def test_spans_follow_a_flip_onto_the_right_tokens(minilm_tokenizer):
    text = "the leftmost red square and the blue circle on the left"
    record = {"task": "phrase", "text": text, "phrases": [{"span": [0, 23], "boxes": [[2, 2, 10, 10]]},
                                                           {"span": [28, 43], "boxes": [[20, 20, 40, 30]]}]}
    buf = io.BytesIO()
    Image.new("RGB", (48, 40)).save(buf, "PNG")
    decoder = SampleDecoder(ImageTransform((32, 32), (0, 0, 0), augment=True, jitter=0.0), seed=3)
    samples = [decoder({"__key__": f"k{k}", "json": json.dumps(record).encode(), "png": buf.getvalue()})
               for k in range(12)]
    flipped = next(s for s in samples if s["text"] != text)
    assert flipped["text"] == swap_left_right(text)
    collator = Collator(minilm_tokenizer, processor_for(minilm_tokenizer, 32).image_processor)
    out = collator([flipped])
    words = [minilm_tokenizer.decode(out["input_ids"][0][out["phrase_tokens"][0, p]]) for p in range(2)]
    assert words == ["the rightmost red square", "the blue circle"]


def test_a_phrase_of_several_boxes_trains_against_the_box_enclosing_them():
    boxes = box_convert(torch.tensor([[10.0, 20.0, 30.0, 40.0], [25.0, 5.0, 50.0, 35.0]]) / 100, "xyxy", "cxcywh")
    expected = box_convert(torch.tensor([0.10, 0.05, 0.50, 0.40]), "xyxy", "cxcywh")
    torch.testing.assert_close(merged_target(boxes).float(), expected)


def test_the_model_boxes_each_phrase_from_its_span_and_the_loss_is_l1_plus_giou_over_trained_phrases():
    torch.manual_seed(0)
    model = VLCoAttnForPhraseGrounding(tiny_config()).eval()
    ids, pixels = batch(B=2, T=6)
    tokens = torch.zeros(2, 3, 6, dtype=torch.bool)
    tokens[0, 0, 1:3] = tokens[0, 1, 3] = tokens[1, 0, 2:5] = True  # row 1 has one phrase, then padding
    targets = torch.tensor([[[0.3, 0.4, 0.2, 0.2], [0.7, 0.6, 0.3, 0.1], [0.5, 0.5, 0.1, 0.1]],
                            [[0.5, 0.5, 0.4, 0.6], [0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1]]])
    trained = torch.tensor([[True, False, False], [True, False, False]])  # (0, 1) has no box
    out = model(ids, pixels, phrase_tokens=tokens, phrase_boxes=targets, phrase_mask=trained)
    assert out.pred_boxes.shape == (2, 3, 4) and out.phrase_mask.tolist() == [[True, True, False], [True, False, False]]
    base = model.vlcoattn(ids, pixels)
    for b, p, cols in ((0, 0, slice(1, 3)), (0, 1, slice(3, 4)), (1, 0, slice(2, 5))):
        h, c = base.last_hidden_state[b, cols].mean(0), base.base_centers[b, cols].mean(0)
        torch.testing.assert_close(out.pred_boxes[b, p], model.box_head(h[None], c[None])[0])
    pred, true = out.pred_boxes[trained], targets[trained]
    l1 = (pred - true).abs().sum(-1).mean()
    giou = (1 - generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(true, "cxcywh", "xyxy")).diag()).mean()
    torch.testing.assert_close(out.loss_l1, l1)
    torch.testing.assert_close(out.loss_giou, giou)
    torch.testing.assert_close(out.loss, 5.0 * l1 + 2.0 * giou)
    halved = model(ids, pixels, phrase_tokens=tokens, phrase_boxes=targets, phrase_mask=trained,
                   num_items_in_batch={"phrase": 4})
    torch.testing.assert_close(halved.loss_l1, l1 / 2)
    with pytest.raises(ValueError, match="phrase_tokens"):
        model(ids, pixels)


# ----------------------------------------------------------------------------- data


def test_clevr_lite_captions_are_added_last_and_change_nothing_else():
    plain, with_captions = SyntheticConfig(), SyntheticConfig(captions=True)
    for index in range(6):
        a, b = generate_scene(0, "train", index, plain), generate_scene(0, "train", index, with_captions)
        assert b.records[:-1] == a.records and a.objects == b.objects
        suffix, record = b.records[-1]
        text, phrases = scene_caption(b.objects, plain.image_size)
        assert suffix == "c0" and record["task"] == "phrase" and record["text"] == text
        assert record["phrases"] == phrases and len(phrases) == len(b.objects)


def test_make_shards_synthetic_captions_writes_phrase_samples(tmp_path):
    from vlcoattn.cli.make_shards import main

    assert main(["synthetic", "--out", str(tmp_path), "--num", "2", "--size", "48", "--questions-per-scene", "0",
                 "--refs-per-scene", "0", "--captions", "--no-progress"]) == 0
    info = json.loads((tmp_path / "train" / "dataset.json").read_text())
    assert info["tasks"] == {"phrase": 2}


def _flickr_root(tmp_path: Path) -> tuple[Path, Path]:
    """The fixtures, plus a zero-width box of entity 2 (in two captions), a split file and the image."""
    root = tmp_path / "entities"
    shutil.copytree(FIXTURES, root)
    xml = root / "Annotations" / "1000268201.xml"
    degenerate = ("<object><name>2</name><bndbox><xmin>60</xmin><ymin>70</ymin><xmax>60</xmax><ymax>90</ymax>"
                  "</bndbox></object></annotation>")
    xml.write_text(xml.read_text().replace("</annotation>", degenerate))
    (root / "val.txt").write_text("1000268201\n")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (375, 500), (90, 120, 30)).save(images / "1000268201.jpg")
    return root, images


def test_make_shards_flickr30k_writes_phrase_samples_skipping_zero_size_boxes(tmp_path, minilm_tokenizer):
    from vlcoattn.cli.make_shards import main

    root, images = _flickr_root(tmp_path)
    out = tmp_path / "shards"
    assert main(["flickr30k", "--root", str(root), "--images", str(images), "--split", "val", "--out", str(out),
                 "--no-progress", "--no-shuffle"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["tasks"] == {"phrase": 5} and info["skipped"] == {"zero_size_box": 2}
    _, captions = read_image(FIXTURES, "1000268201")  # the original files: no degenerate box
    raws = list(read_shard(str(out / "shard-000000.tar"), 0, 5))
    records = [json.loads(r["json"]) for r in raws]
    assert [(r["text"], r["phrases"]) for r in records] == [(t, p) for t, p in captions]
    no_box = {p["id"] for r in records for p in r["phrases"] if not p["boxes"]}
    assert no_box == {"0", "6", "8"}  # not visual, no box drawn, the scene: kept with boxes []
    decoder = SampleDecoder(ImageTransform((64, 64), (0, 0, 0)))
    batch_ = Collator(minilm_tokenizer, processor_for(minilm_tokenizer, 64).image_processor)([decoder(r) for r in raws])
    trained = [[bool(batch_["phrase_mask"][i, j]) for j in range(len(r["phrases"]))] for i, r in enumerate(records)]
    assert trained == [[bool(p["boxes"]) for p in r["phrases"]] for r in records]


# ----------------------------------------------------------------------------- training and evaluation


@pytest.fixture(scope="module")
def caption_job(tmp_path_factory, minilm_tokenizer):
    """A tiny CooBERT dir (MiniLM's tokenizer) and CLEVR-lite captions alone at 64 px."""
    from vlcoattn.data import write_synthetic
    from vlcoattn.text import CooBertConfig, CooBertModel

    root = tmp_path_factory.mktemp("phrase")
    config = CooBertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64, shared_key_dim=16, max_position_embeddings=64)
    torch.manual_seed(0)
    CooBertModel(config).save_pretrained(root / "text")
    minilm_tokenizer.save_pretrained(root / "text")
    captions = SyntheticConfig(image_size=64, questions_per_scene=0, refs_per_scene=0, captions=True)
    write_synthetic(root / "data", 16, seed=0, config=captions, progress=False)
    return root


def test_a_tiny_phrase_training_reports_recall_at_1_and_the_evaluation_tool_reproduces_it(caption_job, capsys):
    import yaml

    from vlcoattn.cli.evaluate import main as evaluate_main
    from vlcoattn.train.config import load_config
    from vlcoattn.train.job_config import JobConfig
    from vlcoattn.train.trainer import train

    data, run = caption_job / "data", caption_job / "run"
    cfg = {
        "task": "phrase",
        "run": {"dir": str(run), "seed": 0, "log_every": 1, "progress": False},
        "model": {"text": str(caption_job / "text"), "convert_from": None, "backbone": "convnext_atto",
                  "pretrained_backbone": False, "image_size": 64,
                  "config": {"coattention_config": {"num_layers": 1}, "vision_config": {"out_indices": [-2]}}},
        "data": {"train": [str(data / "train")], "val": [str(data / "val")], "test": {"test": [str(data / "test")]},
                 "batch_size": 4, "eval_batch_size": 8, "max_text_len": 48, "shuffle_buffer": 8},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"steps": 2, "report": True, "report_images": 2},
    }
    (caption_job / "job.yaml").write_text(yaml.safe_dump(cfg))
    result = train(load_config(JobConfig, caption_job / "job.yaml"))
    final = json.loads((run / "final_metrics.json").read_text())
    assert final == result.metrics
    for split in ("val", "test"):
        m = final[split]
        assert m["phrases"] >= 2 and m["phrases_without_box"] == 0
        for protocol in ("any", "merged"):  # one box per CLEVR-lite phrase: the protocols agree
            assert 0 <= m[f"recall@1_{protocol}"] <= 1
            assert m[f"recall@1_{protocol}"] == m["recall@1_any"]
            for baseline in ("whole_image", "center_box"):
                assert 0 <= m[f"{baseline}/recall@1_{protocol}"] <= 1
    report = (run / "report.md").read_text()
    assert "recall@1_any" in report and "| whole image |" in report
    capsys.readouterr()
    assert evaluate_main(["--model", str(run / "final"), "--data", str(data / "test"), "--no-progress",
                          "--predictions", str(caption_job / "p.jsonl")]) == 0
    reproduced = json.loads(capsys.readouterr().out)
    expected = {k: v for k, v in final["test"].items() if not k.startswith(("whole_image/", "center_box/"))}
    assert reproduced == pytest.approx(expected, rel=1e-5)
    preds = [json.loads(line) for line in (caption_job / "p.jsonl").read_text().splitlines()]
    assert sum(len(p["phrases"]) for p in preds) == final["test"]["phrases"]
    assert all(len(q["box"]) == 4 and set(q["hit"]) == {"any", "merged"} for p in preds for q in p["phrases"])


def test_a_saved_phrase_model_reloads_through_auto_and_knows_its_task(tmp_path):
    from transformers import AutoModelForZeroShotObjectDetection

    from vlcoattn.loading import model_class, saved_task

    torch.manual_seed(0)
    model = VLCoAttnForPhraseGrounding(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    auto = AutoModelForZeroShotObjectDetection.from_pretrained(tmp_path).eval()
    assert type(auto) is VLCoAttnForPhraseGrounding and model_class(tmp_path) is VLCoAttnForPhraseGrounding
    assert saved_task(tmp_path, VLCoAttnForPhraseGrounding) == "phrase"
    ids, pixels = batch(B=1, T=5)
    tokens = torch.tensor([[[False, True, True, False, False]]])
    torch.testing.assert_close(auto(ids, pixels, phrase_tokens=tokens).pred_boxes,
                               model(ids, pixels, phrase_tokens=tokens).pred_boxes)


def test_scoring_finds_a_phrase_in_original_pixels_and_counts_one_without_a_box_apart(minilm_tokenizer):
    from types import SimpleNamespace

    from vlcoattn.eval.baselines import PhraseBoxBaseline

    text = "a dog and the sky and a red ball"
    record = {"task": "phrase", "text": text,
              "phrases": [{"span": [0, 5], "boxes": [[0, 0, 48, 40]], "type": "animals"}, {"span": [10, 17], "boxes": []},
                          {"span": [22, 32], "boxes": [[4, 6, 12, 10], [30, 20, 44, 36]], "type": "other"}]}
    buf = io.BytesIO()
    Image.new("RGB", (48, 40)).save(buf, "PNG")
    sample = SampleDecoder(ImageTransform((32, 32), (0, 0, 0)))({"__key__": "k", "json": json.dumps(record).encode(),
                                                                  "png": buf.getvalue()})
    batch_ = Collator(minilm_tokenizer, processor_for(minilm_tokenizer, 32).image_processor)([sample])
    # predictions in canvas cxcywh (48 x 40 letterboxed into 32 x 32): the whole image for the dog; the
    # second ball box alone for the ball (Any-Box hit, Merged-Box miss)
    lb = letterbox_params(48, 40, 32)
    original = torch.tensor([[0.0, 0, 48, 40], [0, 0, 1, 1], [30, 20, 44, 36]])
    canvas = original * torch.tensor([lb.scale_x, lb.scale_y] * 2) + torch.tensor([lb.pad_x, lb.pad_y] * 2)
    pred = box_convert(canvas / 32, "xyxy", "cxcywh")[None]
    spec, rows = get_task("phrase"), [{}]
    acc = spec.metric_accumulator(None)
    model = SimpleNamespace(phrase_boxes_output="pred_boxes")  # the output field of a phrase model's boxes
    spec.score_batch(model, SimpleNamespace(pred_boxes=pred), batch_, {}, acc, rows)
    metrics = acc.all_reduce().compute()
    assert metrics["recall@1_any"] == 1.0 and metrics["recall@1_merged"] == 0.5
    assert metrics["recall@1_merged/animals"] == 1.0 and metrics["recall@1_merged/other"] == 0.0
    assert metrics["phrases"] == 2 and metrics["phrases_without_box"] == 1
    found = torch.tensor([p["box"] for p in rows[0]["phrases"]])
    torch.testing.assert_close(found[::2], original[::2], atol=0.01, rtol=0)  # back in original pixels
    assert "hit" not in rows[0]["phrases"][1]
    whole = PhraseBoxBaseline("phrase")
    whole.add(batch_)
    assert whole.compute()["whole_image/recall@1_any"] == 0.5  # the dog fills the image; the ball does not
