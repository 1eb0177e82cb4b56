"""Phrase grounding at inference: the ``vlcoattn-phrase-grounding`` pipeline and its call shapes, boxes back
in original pixels and scores as the share of each phrase's prior inside its box (both recomputed here),
phrases as substrings, occurrences or spans, Predictor, ``tools/infer.py --phrase`` with its picture,
batch rows, the model card's snippet and the export's refusal; on a tiny random model."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shutil

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from PIL import Image
from torchvision.ops import box_convert
from transformers import AutoTokenizer, pipeline

from vlcoattn.assets import minilm_dir, sample_photo
from vlcoattn.data.read.transforms import letterbox_params
from vlcoattn.infer import PhrasePredictor, Predictor, predict_jsonl
from vlcoattn.models import VLCoAttnForPhraseGrounding, VLCoAttnProcessor

from helpers import text_config, tiny_config

CANVAS = (32, 48)  # (H, W)
CAPTION = "a cup on a red plate and a spoon"
PHRASES = ["a cup", "a red plate", "a spoon"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread on the shared cores


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random phrase model with the MiniLM tokenizer and its processor."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    model = VLCoAttnForPhraseGrounding(tiny_config(text_config=text_config(vocab_size=tokenizer.vocab_size),
                                                   vision_config=dict(image_size=list(CANVAS))))
    root = tmp_path_factory.mktemp("phrase_model")
    model.save_pretrained(root)
    VLCoAttnProcessor.for_model(model, tokenizer, max_text_len=16).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def ground(model_dir):
    return pipeline("vlcoattn-phrase-grounding", model=str(model_dir))


@pytest.fixture(scope="module")
def predictor(model_dir):
    return Predictor.from_pretrained(model_dir)


def _independent(model_dir, image, caption: str, spans: list[tuple[int, int]]):
    """Boxes in original pixels and scores, recomputed here from the model's raw outputs: the phrase tokens
    from the tokenizer's offsets, the letterbox undone by its parameters, the prior summed cell by cell."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = VLCoAttnForPhraseGrounding.from_pretrained(model_dir).eval()
    enc = tokenizer(caption, return_offsets_mapping=True, truncation=True, max_length=16, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    tokens = torch.tensor([[[b > a and a < e and b > s for a, b in offsets] for s, e in spans]])
    processor = VLCoAttnProcessor.from_pretrained(model_dir)
    pixels = processor.image_processor(image)["pixel_values"]
    with torch.no_grad():
        out = model(enc["input_ids"], pixels, enc["attention_mask"], phrase_tokens=tokens)
    picture = Image.open(image)
    W, H = picture.size
    lb = letterbox_params(W, H, CANVAS)
    canvas = box_convert(out.pred_boxes[0], "cxcywh", "xyxy") * torch.tensor([CANVAS[1], CANVAS[0]] * 2)
    boxes = (canvas - torch.tensor([lb.pad_x, lb.pad_y] * 2)) / torch.tensor([lb.scale_x, lb.scale_y] * 2)
    boxes = torch.minimum(boxes.clamp_min(0), torch.tensor([W, H, W, H], dtype=boxes.dtype))
    heat = out.heatmaps[0]  # (T, h, w)
    h, w = heat.shape[-2:]
    scores = []
    for p, (x0, y0, x1, y1) in enumerate(box_convert(out.pred_boxes[0], "cxcywh", "xyxy").tolist()):
        prior = heat[tokens[0, p]].mean(0)
        scores.append(sum(float(prior[i, j]) for i in range(h) for j in range(w)
                          if x0 <= (j + 0.5) / w <= x1 and y0 <= (i + 0.5) / h <= y1))
    return boxes, torch.tensor(scores), tokens[0]


# ----------------------------------------------------------------------------- the pipeline


def test_the_pipeline_gives_grounding_dinos_shape_with_boxes_in_pixels_and_scores_recomputed(model_dir, ground):
    image = str(sample_photo("coffee"))
    got = ground(image, CAPTION, phrases=PHRASES)
    assert set(got) == {"scores", "boxes", "text_labels", "labels", "spans"}
    assert got["text_labels"] == got["labels"] == PHRASES and got["spans"] == [[0, 5], [9, 20], [25, 32]]
    boxes, scores, tokens = _independent(model_dir, image, CAPTION, [(0, 5), (9, 20), (25, 32)])
    assert tokens.sum(-1).tolist() == [2, 3, 2]  # "a cup", "a red plate", "a spoon"
    torch.testing.assert_close(torch.tensor(got["boxes"]), boxes, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.tensor(got["scores"]), scores, atol=1e-4, rtol=0)
    assert all(0.0 <= s <= 1.0 for s in got["scores"]) and len(set(got["scores"])) > 1


def test_the_pipeline_takes_transformers_call_shapes_substrings_occurrences_and_spans(ground):
    image = str(sample_photo("coffee"))
    expected = ground(image, CAPTION, phrases=PHRASES)
    spans = [[0, 5], {"phrase": "a red plate"}, {"span": [25, 32], "boxes": []}]  # a data row's phrase is a span
    for got in (ground(image=image, text=CAPTION, phrases=PHRASES), ground(image, text=CAPTION, phrases=PHRASES),
                ground({"image": image, "text": CAPTION, "phrases": PHRASES}),
                ground([{"image": image, "text": CAPTION, "phrases": PHRASES}])[0],
                ground(image, CAPTION, phrases=spans)):
        assert got == expected
    other = {"image": str(sample_photo("astronaut")), "text": "a person in a suit", "phrases": ["a suit"]}
    both = ground([{"image": image, "text": CAPTION, "phrases": PHRASES}, other], batch_size=2)
    assert both == [expected, ground(**other)] and both[1]["text_labels"] == ["a suit"]
    second = ground(image, CAPTION, phrases=[{"phrase": "a", "occurrence": 1}, {"phrase": "a", "occurrence": 3}])
    assert second["spans"] == [[9, 10], [21, 22]]  # substrings, counted as str.find does: "pl-a-te", "a-nd"


@pytest.mark.parametrize(("phrases", "message"), [
    (["a cup", "a green cup"], r"phrase 'a green cup' \(occurrence 0\) is not in the caption"),
    ([{"phrase": "a", "occurrence": 9}], r"phrase 'a' \(occurrence 9\) is not in the caption"),
    ([[5, 99]], r"bad phrase \[5, 99\] for a caption of 32 characters"),
    ([], "needs a non-empty list of phrases"),
    ("a cup", "needs a non-empty list of phrases"),
])
def test_a_phrase_not_in_the_caption_is_one_clear_error(ground, predictor, phrases, message):
    image = str(sample_photo("coffee"))
    for call in (lambda: ground(image, CAPTION, phrases=phrases),
                 lambda: predictor.predict(image, CAPTION, phrases=phrases)):
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


def test_a_phrase_past_the_text_length_and_other_call_shapes_are_refused(ground):
    image = str(sample_photo("coffee"))
    long = "a cup " * 12 + "and a spoon"
    with pytest.raises(ValueError, match="'a spoon' lies past the model's 16 text tokens"):
        ground(image, long, phrases=["a spoon"])
    with pytest.raises(ValueError, match="phrases= goes with one image and one caption"):
        ground([image, image], CAPTION, phrases=PHRASES)
    with pytest.raises(ValueError, match=r"got the keys \['image', 'text'\]"):
        ground({"image": image, "text": CAPTION})


def test_the_processor_post_processes_from_target_sizes_as_from_the_letterbox(model_dir):
    processor = VLCoAttnProcessor.from_pretrained(model_dir)
    pred = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.25, 0.5, 0.3, 0.6]]])
    tokens = torch.tensor([[[False, True, True, False], [False, False, False, True]]])
    heat = torch.zeros(1, 4, 2, 4)
    # cell centers ((j + 0.5) / 4, (i + 0.5) / 2): token 1's inside phrase 0's box, token 2's not, token 3's
    # inside phrase 1's
    heat[0, 1, 0, 1] = heat[0, 2, 1, 3] = heat[0, 3, 1, 0] = 1.0
    lb = processor.image_processor.preprocess(str(sample_photo("coffee")))["letterbox"]
    W, H = Image.open(sample_photo("coffee")).size
    a = processor.post_process_phrase_grounding({"pred_boxes": pred, "heatmaps": heat}, tokens, letterbox=lb,
                                                text_labels=[["x", "y"]])
    b = processor.post_process_phrase_grounding({"pred_boxes": pred, "heatmaps": heat}, tokens, target_sizes=[(H, W)],
                                                text_labels=[["x", "y"]])
    torch.testing.assert_close(a[0]["boxes"], b[0]["boxes"])
    assert a[0]["scores"].tolist() == [0.5, 1.0] and a[0]["text_labels"] == a[0]["labels"] == ["x", "y"]
    none = processor.post_process_phrase_grounding({"pred_boxes": pred, "heatmaps": None}, tokens, letterbox=lb)
    assert torch.isnan(none[0]["scores"]).all() and none[0]["text_labels"] == ["phrase 0", "phrase 1"]


# ----------------------------------------------------------------------------- Predictor, infer.py, batch


def test_the_predictor_gives_the_pipelines_boxes_with_each_phrases_tokens(ground, predictor):
    image = str(sample_photo("coffee"))
    assert isinstance(predictor, PhrasePredictor)
    result = predictor.predict(image, CAPTION, phrases=PHRASES)
    expected = ground(image, CAPTION, phrases=PHRASES)
    assert [p["box"] for p in result["phrases"]] == expected["boxes"]
    assert [p["score"] for p in result["phrases"]] == expected["scores"]
    tokens = {t["index"]: t["token"] for t in result["tokens"]}
    words = [" ".join(tokens[i] for i in p["token_indices"]) for p in result["phrases"]]
    assert words == ["a cup", "a red plate", "a spoon"]
    pairs = predictor.predict_batch([(image, CAPTION, PHRASES), (image, CAPTION, ["a fork"])])
    assert pairs[0]["phrases"] == result["phrases"] and "'a fork'" in pairs[1]["error"]


def test_infer_cli_draws_one_colour_per_phrase(model_dir, tmp_path, capsys):
    from vlcoattn.cli.infer import main

    png = tmp_path / "phrases.png"
    image = str(sample_photo("coffee"))
    assert main(["--model", str(model_dir), "--image", image, "--text", CAPTION, "--phrase", "a cup",
                 "--span", "9:20", "--viz", str(png)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(p["text"], p["span"]) for p in result["phrases"]] == [("a cup", [0, 5]), ("a red plate", [9, 20])]
    assert result["viz"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    picture = Image.open(png).convert("RGB")
    assert picture.width > 2 * picture.height  # the image and one panel per phrase, side by side
    colours = picture.getcolors(1 << 20)
    assert any(c == (255, 0, 0) for _, c in colours) and any(c == (0, 255, 255) for _, c in colours)
    with pytest.raises(ValueError, match=r"give the phrases of --text to box with --phrase TEXT or --span START:END"):
        main(["--model", str(model_dir), "--image", image, "--text", CAPTION])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), "--image", image, "--text", CAPTION, "--span", "9-20"])
    assert "argument --span: invalid span value: '9-20'" in capsys.readouterr().err


def test_batch_rows_carry_their_phrases_and_a_row_without_is_one_line(predictor, tmp_path):
    shutil.copy(sample_photo("coffee"), tmp_path / "photo.jpg")
    rows = [{"id": 1, "image": "photo.jpg", "text": CAPTION, "phrases": PHRASES},
            {"id": 2, "image": "photo.jpg", "text": CAPTION, "phrases": [{"span": [9, 20], "boxes": [[0, 0, 5, 5]]}]},
            {"id": 3, "image": "photo.jpg", "text": CAPTION},
            {"id": 4, "image": "photo.jpg", "text": CAPTION, "phrases": ["a fork"]}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = io.StringIO()
    counts = predict_jsonl(predictor, tmp_path / "rows.jsonl", out, progress=False)
    assert counts == {"rows": 4, "ok": 2, "errors": 2}
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    alone = predictor.predict(tmp_path / "photo.jpg", CAPTION, phrases=PHRASES)["phrases"]
    torch.testing.assert_close(torch.tensor([p["box"] for p in got[0]["phrases"]]),
                               torch.tensor([p["box"] for p in alone]), atol=0.02, rtol=0)
    assert got[1]["phrases"][0]["text"] == "a red plate"
    assert got[2]["error"] == "line 3: task 'phrase' needs a 'phrases' list (substrings of the text or [start, end] spans)"
    assert "'a fork'" in got[3]["error"]


# ----------------------------------------------------------------------------- card and export


def test_the_model_card_snippet_runs(model_dir, tmp_path, monkeypatch):
    from vlcoattn.train.config import load_config
    from vlcoattn.train.job_config import JobConfig
    from vlcoattn.train.model_card import write_model_card

    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({"task": "phrase", "run": {"dir": str(tmp_path / "run")},
                                        "model": {"backbone": "test_resnet", "pretrained_backbone": False},
                                        "data": {"train": [str(tmp_path / "data")]}}))
    card_dir = tmp_path / "card"
    shutil.copytree(model_dir, card_dir)
    write_model_card(card_dir, load_config(JobConfig, job_file))
    card = ModelCard.load(card_dir / "README.md")
    assert card.data.pipeline_tag == "zero-shot-object-detection"
    (block,) = re.findall(r"```python\n(.*?)```", card.text, re.S)
    shutil.copy(sample_photo("coffee"), tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "model card", "exec"), {})
    piped, predicted = map(ast.literal_eval, printed.getvalue().splitlines())
    assert piped["text_labels"] == ["a small red square", "a large blue circle"] and len(piped["boxes"]) == 2
    assert predicted[0]["text"] == "a small red square" and predicted[0]["box"] == piped["boxes"][0]


def test_export_refuses_the_phrase_model_in_one_line(model_dir, tmp_path):
    from vlcoattn.export import export_onnx

    with pytest.raises(ValueError, match=r"cannot export a VLCoAttnForPhraseGrounding \(task 'phrase'\): its "
                                         r"input\(s\) phrase_tokens are not exported yet") as error:
        export_onnx(model_dir, tmp_path / "onnx")
    assert "\n" not in str(error.value)
