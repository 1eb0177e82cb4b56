"""Inference: Predictor (VQA, grounding, classify, generate), training-identical preprocessing, EXIF,
exotic and broken images, JSONL batches, visualisation, and tools/infer.py (in-process and as a
subprocess for every bad input: one stderr line, exit code 2)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from vlcoattn.assets import minilm_dir, sample_photo
from vlcoattn.data import LoaderConfig, build_loader, convert_jsonl, invert_boxes
from vlcoattn.infer import Predictor, draw_prediction, predict_jsonl, select_words
from vlcoattn.loading import write_task_file
from vlcoattn.models import (
    VLCoAttnConfig,
    VLCoAttnForGrounding,
    VLCoAttnForMultitask,
    VLCoAttnForQuestionAnswering,
)
from vlcoattn.text import CooBertConfig, CooBertForCausalLM, CooBertForSequenceClassification
from vlcoattn.utils.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "china", "flower")
ANSWERS = ["yes", "no", "red", "blue", "cat", "two"]
LABELS = {0: "business", 1: "sport", 2: "tech"}
MAX_TOKENS = 24


def text_config(vocab_size: int, **kw) -> CooBertConfig:
    args = dict(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        shared_key_dim=16, max_position_embeddings=MAX_TOKENS, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    args.update(kw)
    return CooBertConfig(**args)


def vl_config(vocab_size: int, **kw) -> VLCoAttnConfig:
    """A tiny VLCoAttnConfig; a sub-config dict in ``kw`` updates the tiny one's fields, other keys replace."""
    args = dict(
        text_config=text_config(vocab_size), vision_config=dict(backbone="test_resnet", image_size=[64, 64]),
        coattention_config=dict(num_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    )
    for key, value in kw.items():
        args[key] = {**args[key], **value} if isinstance(args.get(key), dict) else value
    return VLCoAttnConfig(**args)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread on the shared cores


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny saved models (random weights, the real MiniLM tokenizer), by name -> directory."""
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    root = tmp_path_factory.mktemp("infer_models")
    V = tok.vocab_size
    torch.manual_seed(0)
    built = {
        "vqa": VLCoAttnForQuestionAnswering(vl_config(V, heads_config=dict(answer_vocab=ANSWERS))),
        "vqa_ce": VLCoAttnForQuestionAnswering(vl_config(V, heads_config=dict(answer_vocab=ANSWERS, answer_loss="ce"))),
        "ground": VLCoAttnForGrounding(vl_config(V, vision_config=dict(image_size=[64, 96], out_indices=[-2, -1]))),
        "ground_noprior": VLCoAttnForGrounding(vl_config(V, coattention_config=dict(spatial_prior="none"))),
        "multi": VLCoAttnForMultitask(vl_config(V, heads_config=dict(answer_vocab=ANSWERS),
                                                vision_config=dict(image_size=[96, 64]))),
        "cls": CooBertForSequenceClassification(text_config(V, num_labels=3, id2label=LABELS)),
        "cls_multi": CooBertForSequenceClassification(text_config(V, num_labels=3, id2label=LABELS,
                                                                  problem_type="multi_label_classification")),
        "lm": CooBertForCausalLM(text_config(V, max_position_embeddings=64)),
    }
    dirs = {}
    for name, model in built.items():
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    dirs["no_config"] = root / "no_config"
    shutil.copytree(dirs["vqa"], dirs["no_config"])
    (dirs["no_config"] / "config.json").unlink()
    dirs["no_weights"] = root / "no_weights"
    shutil.copytree(dirs["vqa"], dirs["no_weights"])
    (dirs["no_weights"] / "model.safetensors").unlink()
    return dirs


@pytest.fixture(scope="session")
def predictors(models):
    cache: dict[str, Predictor] = {}

    def get(name: str) -> Predictor:
        if name not in cache:
            cache[name] = Predictor.from_pretrained(models[name])
        return cache[name]

    return get


def _png_header_bomb(path: Path, width: int, height: int) -> None:
    """A valid 1x1 PNG whose IHDR claims width x height (CRC fixed): a decompression bomb's header."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Image files in every mode that must work, and the broken ones that must fail cleanly."""
    d = tmp_path_factory.mktemp("infer_images")
    photo = Image.open(sample_photo("chelsea")).convert("RGB")  # 451 x 300
    files = {}

    def save(name: str, image: Image.Image, **kw) -> None:
        files[name] = d / name
        image.save(files[name], **kw)

    save("cmyk.jpg", photo.convert("CMYK"), quality=95)
    wide16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save("gray16.png", Image.fromarray(wide16))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    save("rgba.png", rgba)
    save("palette.png", photo.convert("P", palette=Image.Palette.ADAPTIVE))
    save("gray.jpg", photo.convert("L"))
    save("tiny.png", photo.resize((8, 8)))
    save("wide.jpg", photo.resize((2000, 50)))
    # broken
    files["missing"] = d / "missing.jpg"
    files["directory"] = d / "a_folder.jpg"
    files["directory"].mkdir()
    files["text"] = d / "notes.jpg"
    files["text"].write_text("this is not an image\n")
    jpeg = io.BytesIO()
    photo.save(jpeg, "JPEG", quality=90)
    files["truncated"] = d / "truncated.jpg"
    files["truncated"].write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    files["empty"] = d / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["bomb"] = d / "bomb.png"
    _png_header_bomb(files["bomb"], 12_000, 12_000)  # over our 64M limit, under PIL's own
    return files


def _expected_box(predictor: Predictor, image: Path, text: str) -> list[float]:
    """The box a prediction must give, worked out here: the model's normalized (cx, cy, w, h) on the
    canvas, mapped back through the centred aspect-preserving fit of the image into the canvas (the
    canvas is the pixel tensor's size), then clipped to the image."""
    with Image.open(image) as im:
        W, H = im.size
    inputs = predictor.processor(images=image, text=text)
    with torch.no_grad():
        out = predictor.model(inputs["input_ids"], inputs["pixel_values"], attention_mask=inputs["attention_mask"])
    cx, cy, w, h = out.pred_boxes[0].double().tolist()
    ch, cw = inputs["pixel_values"].shape[-2:]
    scale = min(cw / W, ch / H)
    new_w, new_h = max(1, round(W * scale)), max(1, round(H * scale))
    pad_x, pad_y = (cw - new_w) // 2, (ch - new_h) // 2

    def x(v: float) -> float:
        return min(max((v * cw - pad_x) * W / new_w, 0.0), W)

    def y(v: float) -> float:
        return min(max((v * ch - pad_y) * H / new_h, 0.0), H)

    return [x(cx - w / 2), y(cy - h / 2), x(cx + w / 2), y(cy + h / 2)]


# ------------------------------------------------------------------------------------ predictions


def test_real_photos_give_json_boxes_in_image_pixels_and_a_png(predictors, tmp_path):
    predictor = predictors("ground")
    for name in PHOTOS:
        path = sample_photo(name)
        pred = predictor.predict(path, f"the {name} in the middle of the picture")
        again = json.loads(json.dumps(pred))  # valid JSON
        W, H = Image.open(path).size
        assert again["image_size"] == [W, H] and again["task"] == "ground"
        text = f"the {name} in the middle of the picture"
        assert again["box"] == pytest.approx(_expected_box(predictor, path, text), abs=0.01), name
        assert set(again["timing_ms"]) == {"preprocess", "model", "postprocess", "total"}
        assert again["tokens"][0]["token"] == "[CLS]" and again["tokens"][0]["special"]
        words = [t["word"] for t in again["tokens"] if not t["special"]]
        assert name in words
        for tok in again["tokens"]:
            assert len(tok["head_centers"]) == len(tok["scales"]) == len(tok["sigma"]) == 4
        if name in ("astronaut", "china"):  # square and landscape
            out = draw_prediction(path, pred, tmp_path / f"{name}.png")
            with Image.open(out) as png:
                assert png.format == "PNG" and 500 <= png.size[0] <= 2000 and 200 <= png.size[1] <= 2000


def test_preprocessing_and_outputs_match_the_training_loader(models, predictors, tmp_path):
    """The training loader's batch (shards -> build_loader at the model's preprocessing) through the
    model gives the predictor's boxes and centers."""
    predictor = predictors("ground")
    model = predictor.model
    (tmp_path / "img").mkdir()
    records = []
    for i, name in enumerate(("astronaut", "coffee", "china")):
        shutil.copy(sample_photo(name), tmp_path / "img" / sample_photo(name).name)
        text = "the " + " ".join([name] * (i + 1))  # different lengths: padding in the batch
        records.append({"id": name, "image": sample_photo(name).name, "text": text, "task": "ground",
                        "boxes": [[1, 1, 9, 9]]})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    convert_jsonl(tmp_path / "in.jsonl", tmp_path / "img", tmp_path / "shards", progress=False)
    loader = build_loader(str(tmp_path / "shards"), predictor.processor,
                          LoaderConfig(batch_size=3, shuffle=False))
    batch = next(iter(loader))
    with torch.no_grad():
        out = model(batch["input_ids"], batch["pixel_values"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
    want = invert_boxes(out.pred_boxes, batch["letterbox"])
    by_key = {r["id"]: r for r in records}
    for b, key in enumerate(batch["keys"]):
        rec = by_key[key]
        pred = predictor.predict(tmp_path / "img" / rec["image"], rec["text"])
        torch.testing.assert_close(torch.tensor(pred["box"]), want[b].float(), atol=0.02, rtol=0)
        assert pred["image_size"] == batch["letterbox"][b, 4:6].int().tolist()


def test_vqa_probabilities_sigmoid_for_bce_softmax_for_ce(predictors):
    photo = sample_photo("coffee")
    for name, total in (("vqa", None), ("vqa_ce", 1.0)):
        predictor = predictors(name)
        pred = predictor.predict(photo, "what is in the cup?", top_k=len(ANSWERS))
        assert pred["task"] == "vqa" and "box" not in pred
        probs = [a["probability"] for a in pred["answers"]]
        assert sorted(probs, reverse=True) == probs and {a["answer"] for a in pred["answers"]} == set(ANSWERS)
        if total is not None:
            assert sum(probs) == pytest.approx(total, abs=1e-4)
        # against the raw logits of the same preprocessed input
        batch = predictor.processor(images=photo, text="what is in the cup?")
        with torch.no_grad():
            logits = predictor.model(batch["input_ids"], batch["pixel_values"],
                                     attention_mask=batch["attention_mask"]).logits[0]
        ref = logits.sigmoid() if name == "vqa" else logits.softmax(-1)
        got = torch.tensor([probs[[a["answer"] for a in pred["answers"]].index(a)] for a in ANSWERS])
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert len(predictors("vqa").predict(photo, "what is this?", top_k=2)["answers"]) == 2


def test_multitask_model_gives_answers_and_a_box_or_either_on_request(predictors):
    predictor = predictors("multi")
    photo = sample_photo("china")
    both = predictor.predict(photo, "the temple on the left")
    assert both["task"] == "vqa+ground" and len(both["answers"]) == 5
    assert both["box"] == pytest.approx(_expected_box(predictor, photo, "the temple on the left"), abs=0.01)
    vqa = predictor.predict(photo, "the temple on the left", task="vqa")
    assert vqa["task"] == "vqa" and "box" not in vqa and vqa["answers"] == both["answers"]
    ground = predictor.predict(photo, "the temple on the left", task="ground")
    assert ground["task"] == "ground" and "answers" not in ground and ground["box"] == both["box"]
    with pytest.raises(ValueError, match="supports --task vqa / ground"):
        predictor.resolve_task("classify")


def test_token_centers_are_in_original_image_pixels(predictors):
    predictor = predictors("ground")  # 64 x 96 canvas, two levels
    photo = sample_photo("chelsea")  # 451 x 300: letterboxed with padding
    batch = predictor.processor(images=photo, text="the cat")
    with torch.no_grad():
        out = predictor.model.vlcoattn(batch["input_ids"], batch["pixel_values"], attention_mask=batch["attention_mask"])
    pred = predictor.predict(photo, "the cat")
    sx, sy, px, py, _, _, cw, ch = batch["letterbox"][0].double().tolist()
    for t, tok in enumerate(pred["tokens"]):
        cx, cy = out.reference_centers[0, t].double().tolist()
        assert tok["center"] == pytest.approx([(cx * cw - px) / sx, (cy * ch - py) / sy], abs=0.01)
        mx, my = out.attended_centers[-1][0, t].mean(0).double().tolist()  # head-mean, last layer
        assert tok["attended"] == pytest.approx([(mx * cw - px) / sx, (my * ch - py) / sy], abs=0.01)
        np.testing.assert_allclose(tok["scales"], out.scales[-1][0, t].tolist(), atol=1e-4)
        # sigma = sqrt(beta / 2) / |s * mult| cells, one cell = cw / W canvas pixels
        W = out.grid_sizes[-1][1]
        s = out.scales[-1][0, t, 0, 0].abs().item() * predictor.model.vlcoattn.level_scale_multipliers[-1]
        assert tok["sigma"][0][0] == pytest.approx(2.0 / s * cw / W / sx, rel=1e-3)


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_rotated_copy_gives_the_upright_box(predictors, tmp_path, orientation):
    """A file storing the pixels rotated/flipped with an EXIF orientation tag shows the upright photo:
    same size, same box, same token centers (in the displayed, EXIF-applied frame)."""
    predictor = predictors("ground")
    upright = Image.open(sample_photo("chelsea")).convert("RGB")
    inverse = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
               7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.save(tmp_path / "up.png")
    upright.transpose(inverse).save(tmp_path / "rot.png", exif=exif)
    text = "the cat on the left"
    want = predictor.predict(tmp_path / "up.png", text)
    got = predictor.predict(tmp_path / "rot.png", text)
    assert got["image_size"] == want["image_size"] == [451, 300]
    assert got["box"] == pytest.approx(want["box"], abs=0.01)
    assert got["tokens"][2]["center"] == pytest.approx(want["tokens"][2]["center"], abs=0.01)
    if orientation == 6:  # a phone photo: JPEG, stored sideways; lossy, so within 2 px
        upright.save(tmp_path / "up.jpg", quality=95)
        upright.transpose(inverse).save(tmp_path / "rot.jpg", quality=95, exif=exif)
        want = predictor.predict(tmp_path / "up.jpg", text)
        got = predictor.predict(tmp_path / "rot.jpg", text)
        assert got["image_size"] == [451, 300]
        assert got["box"] == pytest.approx(want["box"], abs=2.0)


@pytest.mark.parametrize("name", ["cmyk.jpg", "gray16.png", "rgba.png", "palette.png", "gray.jpg", "tiny.png",
                                  "wide.jpg"])
def test_exotic_images_work(predictors, images, tmp_path, name):
    path = images[name]
    predictor = predictors("ground")
    pred = predictor.predict(path, "the cat")
    with Image.open(path) as im:
        size = im.size
    assert pred["image_size"] == list(size)
    assert pred["box"] == pytest.approx(_expected_box(predictor, path, "the cat"), abs=0.01)
    out = draw_prediction(path, pred, tmp_path / "viz.png")
    with Image.open(out) as png:
        assert png.size[0] >= 300 and png.size[1] >= 150


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing", "image not found: "),
        ("directory", "is a directory, not an image file"),
        ("text", "not an image (unknown or corrupt header)"),
        ("truncated", "cannot decode image"),
        ("empty", "empty file (0 bytes)"),
        ("bomb", "12000x12000 = 144000000 pixels exceeds max_pixels=64000000 (possible decompression bomb)"),
    ],
)
def test_bad_images_raise_one_clear_error(predictors, images, name, message):
    with pytest.raises((ValueError, OSError)) as info:
        predictors("ground").predict(images[name], "the cat")
    assert message in str(info.value) and "\n" not in str(info.value)
    if name not in ("missing", "directory"):
        assert str(images[name]) in str(info.value)  # names the file, not "<N bytes>"


def test_max_pixels_refuses_large_images(models, images):
    small = Predictor.from_pretrained(models["ground"], max_pixels=10_000)
    with pytest.raises(ValueError, match=r"451x300 = 135300 pixels exceeds max_pixels=10000"):
        small.predict(sample_photo("chelsea"), "the cat")


def test_long_text_is_truncated_with_a_warning(models, predictors, caplog, tmp_path):
    text = "the small red cat sitting on the left of the large blue box " * 4
    with caplog.at_level(logging.WARNING, logger="vlcoattn.infer.predictor"):
        pred = predictors("ground").predict(sample_photo("chelsea"), text)
    assert pred["truncated"] is True and len(pred["tokens"]) == MAX_TOKENS
    assert pred["tokens"][-1]["token"] == "[SEP]"
    assert f"more than the model maximum of {MAX_TOKENS}: truncated" in caplog.text
    # a trainer-written dir: texts are cut at the length training used (the tokenizer's model_max_length)
    shutil.copytree(models["ground"], tmp_path / "trained")
    tok = AutoTokenizer.from_pretrained(tmp_path / "trained")
    tok.model_max_length = 8
    tok.save_pretrained(tmp_path / "trained")
    short = Predictor.from_pretrained(tmp_path / "trained").predict(sample_photo("chelsea"), text)
    assert short["truncated"] is True and len(short["tokens"]) == 8
    # the model saw the shorter text: [SEP] sits at another position, so its state and prior differ
    assert short["tokens"][-1]["center"] != pred["tokens"][-1]["center"]


def test_empty_text_and_wrong_tasks_are_clear_errors(predictors):
    ground = predictors("ground")
    with pytest.raises(ValueError, match="empty text"):
        ground.predict(sample_photo("chelsea"), "   ")
    with pytest.raises(ValueError, match=r"--task vqa does not fit .*VLCoAttnForGrounding supports --task ground"):
        ground.predict(sample_photo("chelsea"), "a cat", task="vqa")
    with pytest.raises(ValueError, match=r"--task classify does not fit"):
        ground.resolve_task("classify")
    with pytest.raises(ValueError, match=r"--task generate does not fit .*CooBertForSequenceClassification"):
        predictors("cls").generate("hello")
    with pytest.raises(ValueError, match="text-only"):
        predictors("cls").predict(sample_photo("chelsea"), "a cat")
    assert predictors("vqa").resolve_task("auto") == "vqa"


def test_spatial_prior_none_omits_centers_gracefully(predictors, tmp_path):
    photo = sample_photo("coffee")
    predictor = predictors("ground_noprior")
    pred = predictor.predict(photo, "the cup")
    assert pred["box"] == pytest.approx(_expected_box(predictor, photo, "the cup"), abs=0.01)
    assert [set(t) for t in pred["tokens"]][1] == {"index", "token", "special", "word", "word_index"}
    out = draw_prediction(photo, pred, tmp_path / "noprior.png", words=["cup"])
    assert Image.open(out).size[0] > 200


def test_half_precision_dtypes_stay_close_to_float32(models):
    photo = sample_photo("astronaut")
    want = Predictor.from_pretrained(models["ground"]).predict(photo, "the face")
    for dtype in ("bfloat16", "float16"):
        predictor = Predictor.from_pretrained(models["ground"], dtype=dtype)
        assert predictor.dtype == getattr(torch, dtype)
        got = predictor.predict(photo, "the face")
        assert got["box"] == pytest.approx(want["box"], abs=512 * 0.03)
    with pytest.raises(ValueError, match="dtype must be one of"):
        Predictor.from_pretrained(models["ground"], dtype="int8")


def test_bad_model_dirs_are_clear_errors(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Predictor.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        Predictor.from_pretrained(models["no_config"])
    with pytest.raises(FileNotFoundError, match="has no weights"):
        Predictor.from_pretrained(models["no_weights"])
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(models["vqa"], no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        Predictor.from_pretrained(no_tokenizer)
    broken = tmp_path / "broken"
    shutil.copytree(models["vqa"], broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="cannot load the model"):
        Predictor.from_pretrained(broken)


def test_a_task_file_left_by_an_earlier_model_gives_way_to_the_model_s_heads(models, tmp_path, caplog):
    """A grounding model saved into a dir that held a multitask model keeps the old task file ("vqa+ground");
    the Predictor serves the heads the model has (grounding), with a warning naming the file. A multitask model
    whose file says "vqa" (trained on VQA alone) keeps that task."""
    reused = tmp_path / "reused"
    shutil.copytree(models["multi"], reused)
    write_task_file(reused, "vqa+ground")
    shutil.copytree(models["ground"], reused, dirs_exist_ok=True)
    with caplog.at_level(logging.WARNING, logger="vlcoattn.loading"):
        predictor = Predictor.from_pretrained(reused)
    assert predictor.resolve_task() == "ground"
    assert "vlcoattn_task.json says task 'vqa+ground'" in caplog.text
    assert "box" in predictor.predict(sample_photo("chelsea"), "the cat")
    write_task_file(reused, "ground")
    caplog.clear()
    assert Predictor.from_pretrained(reused).resolve_task() == "ground" and not caplog.text
    vqa_only = tmp_path / "vqa_only"
    shutil.copytree(models["multi"], vqa_only)
    write_task_file(vqa_only, "vqa")
    assert Predictor.from_pretrained(vqa_only).resolve_task() == "vqa"


# ------------------------------------------------------------------------------------------ batch


def _assert_same_prediction(got: dict, want: dict) -> None:
    assert got["image_size"] == want["image_size"] and got["text"] == want["text"]
    if "answers" in want:
        assert [a["answer"] for a in got["answers"]] == [a["answer"] for a in want["answers"]]
        np.testing.assert_allclose([a["probability"] for a in got["answers"]],
                                   [a["probability"] for a in want["answers"]], atol=1e-5)
    if "box" in want:
        np.testing.assert_allclose(got["box"], want["box"], atol=0.02)
    assert [t["token"] for t in got["tokens"]] == [t["token"] for t in want["tokens"]]
    np.testing.assert_allclose([t["center"] for t in got["tokens"]], [t["center"] for t in want["tokens"]], atol=0.02)
    np.testing.assert_allclose([t["sigma"] for t in got["tokens"]], [t["sigma"] for t in want["tokens"]], rtol=1e-4)


def test_batch_equals_single_calls_and_bad_pairs_get_errors(predictors, images):
    pairs = [(sample_photo(n), f"is there a {n} " + "here " * i) for i, n in enumerate(PHOTOS)]
    bad = [(images["missing"], "a cat"), (images["text"], "a cat"), (sample_photo("coffee"), "")]
    for name in ("vqa", "ground", "multi"):
        predictor = predictors(name)
        results = predictor.predict_batch(pairs[:2] + bad + pairs[2:])
        assert [("error" in r) for r in results] == [False, False, True, True, True, False, False, False]
        assert "image not found" in results[2]["error"] and "empty text" in results[4]["error"]
        good = results[:2] + results[5:]
        for (image, text), got in zip(pairs, good):
            _assert_same_prediction(got, predictor.predict(image, text))


def test_predict_jsonl_writes_one_line_per_row_in_order(predictors, images, tmp_path):
    predictor = predictors("vqa")
    shutil.copy(sample_photo("coffee"), tmp_path / "coffee.png")
    rows = [
        json.dumps({"id": "a", "image": "coffee.png", "text": "what is this?"}),
        "{not json",
        json.dumps({"id": 7, "image": str(images["truncated"]), "text": "what is this?"}),
        "",
        json.dumps({"image": "coffee.png", "text": "   "}),
        json.dumps({"image": "coffee.png"}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "b", "image": str(sample_photo("astronaut")), "text": "who is this?"}),
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    out = io.StringIO()
    counts = predict_jsonl(predictor, tmp_path / "pairs.jsonl", out, batch_size=3, progress=False)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert counts == {"rows": 7, "ok": 2, "errors": 5}
    assert [r["line"] for r in lines] == [1, 2, 3, 5, 6, 7, 8]
    assert [r.get("id") for r in lines] == ["a", None, 7, None, None, None, "b"]
    errors = [r.get("error", "") for r in lines]
    assert "not valid JSON" in errors[1] and "truncated.jpg: cannot decode image" in errors[2]
    assert "empty text" in errors[3] and "needs a string 'text'" in errors[4] and "JSON object" in errors[5]
    _assert_same_prediction(lines[0], predictor.predict(tmp_path / "coffee.png", "what is this?"))
    _assert_same_prediction(lines[6], predictor.predict(sample_photo("astronaut"), "who is this?"))


def test_grounding_pipeline_batches_give_the_single_results(models, predictors, tmp_path):
    """pipeline("vlcoattn-grounding", batch_size=4) over 5 pairs (texts of different lengths, images of
    different sizes): the model runs on batches of 4 and 1, and every box and heatmap equals the one of
    that pair alone."""
    from transformers import pipeline

    shutil.copytree(models["ground"], tmp_path / "ground")
    predictors("ground").processor.save_pretrained(tmp_path / "ground")
    ground = pipeline("vlcoattn-grounding", model=str(tmp_path / "ground"))
    items = [{"image": str(sample_photo(name)), "text": f"the {name} " + "on the left " * i}
             for i, name in enumerate(PHOTOS)]
    singles = [ground(item) for item in items]
    forward, sizes = ground.model.forward, []

    def counting_forward(*args, **kwargs):
        sizes.append(len(kwargs["input_ids"]))
        return forward(*args, **kwargs)

    ground.model.forward = counting_forward
    batched = ground(items, batch_size=4)
    assert sizes == [4, 1]
    for got, want in zip(batched, singles, strict=True):
        assert got["box"] == pytest.approx(want["box"], abs=0.02)
        assert want["heatmaps"] and [h["word"] for h in got["heatmaps"]] == [h["word"] for h in want["heatmaps"]]
        for g, w in zip(got["heatmaps"], want["heatmaps"], strict=True):
            torch.testing.assert_close(g["heatmap"], w["heatmap"], atol=1e-5, rtol=1e-4)


# -------------------------------------------------------------------------------------- text only


def test_classify_gives_a_label_and_probabilities(predictors):
    predictor = predictors("cls")
    assert predictor.resolve_task() == "cls" and predictor.resolve_task("classify") == "cls"
    text = "Shares in the company rose after strong quarterly results."
    pred = predictor.classify(text, top_k=3)
    probs = {p["label"]: p["probability"] for p in pred["probabilities"]}
    assert set(probs) == set(LABELS.values()) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred["label"] == pred["probabilities"][0]["label"]
    tok = predictor.tokenizer
    with torch.no_grad():
        ref = predictor.model(**tok([text], return_tensors="pt")).logits[0].softmax(-1)
    assert [probs[LABELS[i]] for i in range(3)] == pytest.approx(ref.tolist(), abs=1e-5)
    batch = predictor.classify_batch([text, "", "The match ended in a draw."])
    assert "empty text" in batch[1]["error"]
    assert [p["probability"] for p in batch[0]["probabilities"]] == pytest.approx(
        [p["probability"] for p in predictor.classify(text)["probabilities"]], abs=1e-5)
    with pytest.raises(ValueError, match="--task vqa does not fit"):
        predictor.resolve_task("vqa")


def test_multi_label_classify_gives_independent_sigmoid_probabilities(predictors):
    """A ``multi_label_classification`` model: each label's probability is the sigmoid of its own logit
    (they need not sum to 1), the label is the most probable one, and a batch gives the single calls."""
    predictor = predictors("cls_multi")
    texts = ["Shares in the company rose after strong quarterly results.", "The match ended in a draw."]
    with torch.no_grad():
        logits = predictor.model(**predictor.tokenizer(texts, padding=True, return_tensors="pt")).logits
    for text, pred, row in zip(texts, predictor.classify_batch(texts, top_k=3), logits, strict=True):
        probs = {p["label"]: p["probability"] for p in pred["probabilities"]}
        assert [probs[LABELS[i]] for i in range(3)] == pytest.approx(row.sigmoid().tolist(), abs=1e-5)
        assert pred["label"] == LABELS[int(row.argmax())] and sum(probs.values()) != pytest.approx(1.0, abs=1e-3)
        assert pred["probabilities"] == predictor.classify(text, top_k=3)["probabilities"]


def test_generate_greedy_is_reproducible_and_beams_and_sampling_work(predictors):
    predictor = predictors("lm")
    first = predictor.generate("the market opened", max_new_tokens=6)
    assert first == {**predictor.generate("the market opened", max_new_tokens=6), "timing_ms": first["timing_ms"]}
    assert len(first["token_ids"]) == 6 and first["task"] == "lm"
    # what the model's own greedy generate() gives for the prompt without the closing [SEP]
    tok = predictor.tokenizer
    ids = tok("the market opened", return_tensors="pt")["input_ids"][:, :-1]
    ref = predictor.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.sep_token_id)
    assert first["token_ids"] == ref[0, ids.shape[1]:].tolist()
    # beam search: transformers' own for each prompt, and not the greedy path for at least one of them
    differs = []
    for prompt in ("the cat sat on", "the market opened", "shares in the", "the government said"):
        beams = predictor.generate(prompt, max_new_tokens=6, num_beams=3)
        ids = tok(prompt, return_tensors="pt")["input_ids"][:, :-1]
        ref = predictor.model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
        assert beams["token_ids"] == ref[0, ids.shape[1]:].tolist()
        differs.append(beams["token_ids"] != predictor.generate(prompt, max_new_tokens=6)["token_ids"])
    assert any(differs), "every prompt's beams equal its greedy path: the beam comparison proves nothing"
    s1 = predictor.generate("the market", max_new_tokens=5, temperature=0.9, top_k=20, seed=3)
    s2 = predictor.generate("the market", max_new_tokens=5, temperature=0.9, top_k=20, seed=3)
    assert s1["token_ids"] == s2["token_ids"]
    with pytest.raises(ValueError, match="empty prompt"):
        predictor.generate("  ")


# -------------------------------------------------------------------------------------------- viz


def test_select_words_defaults_to_content_words_and_checks_requested_ones(predictors):
    pred = predictors("ground").predict(sample_photo("chelsea"), "Is the cat on the left of the sofa?")
    assert [w for w, _ in select_words(pred)] == ["cat", "left", "sofa"]
    assert [w for w, _ in select_words(pred, max_words=2)] == ["cat", "left"]
    assert [w for w, _ in select_words(pred, ["SOFA", "the"])] == ["sofa", "the", "the", "the"]
    with pytest.raises(ValueError, match=r"'dog' is not a word of the text \(its words: Is, the, cat"):
        select_words(pred, ["dog"])


# ---------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def cli():
    from vlcoattn.cli import infer

    def run(*argv: str) -> int:
        with pytest.raises(SystemExit) as info:
            run_cli(infer.main, [str(a) for a in argv])
        return info.value.code

    return run


def test_cli_single_pair_json_and_viz(cli, models, capsys, tmp_path):
    viz = tmp_path / "out.png"
    code = cli("--model", models["vqa"], "--image", sample_photo("astronaut"), "--text", "is this a rocket?",
               "--top-k", "3", "--viz", viz, "--viz-tokens", "rocket", "--viz-heads")
    out = capsys.readouterr()
    assert code == 0, out.err
    pred = json.loads(out.out)
    assert pred["task"] == "vqa" and len(pred["answers"]) == 3 and pred["viz"] == str(viz)
    with Image.open(viz) as png:
        assert png.size[0] > 1000  # image + 4 head panels


def test_cli_classify_and_generate(cli, models, capsys, tmp_path):
    assert cli("--model", models["cls"], "--task", "classify", "--text", "a great goal in the final") == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["label"] in LABELS.values()
    rows = [{"id": 1, "text": "a great goal in the final"}, {"id": 2, "text": ""}, {"id": 3, "text": "new chips"}]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli("--model", models["cls"], "--input", tmp_path / "texts.jsonl", "--no-progress") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["label"] == pred["label"] and "empty text" in lines[1]["error"] and "label" in lines[2]
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "the market"}\n{"prompt": 3}\n')
    assert cli("--model", models["lm"], "--input", tmp_path / "prompts.jsonl", "--max-new-tokens", "3") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines[0]["token_ids"]) <= 3 and "needs a string 'prompt'" in lines[1]["error"]
    argv = ("--model", models["lm"], "--task", "generate", "--prompt", "the market", "--max-new-tokens", "4")
    assert cli(*argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli(*argv, "--num-beams", "3") == 0
    beams = Predictor.from_pretrained(models["lm"]).generate("the market", max_new_tokens=4, num_beams=3)
    assert json.loads(capsys.readouterr().out)["token_ids"] == beams["token_ids"] != first["token_ids"]
    assert cli(*argv) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == first["token_ids"]


def test_cli_batch_jsonl(cli, models, capsys, tmp_path):
    rows = [{"image": str(sample_photo("coffee")), "text": "the cup"}, {"image": "nope.jpg", "text": "a cup"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = cli("--model", models["ground"], "--input", tmp_path / "in.jsonl", "--output", tmp_path / "out.jsonl",
               "--batch-size", "2")
    err = capsys.readouterr().err
    assert code == 0 and "1 of 2 rows predicted, 1 errors" in err and "2/2" in err  # tqdm on stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert "box" in lines[0] and "image not found" in lines[1]["error"]


def _bad_cases(models, images) -> dict[str, tuple[list, str]]:
    """Every bad input: name -> (argv, what the one stderr line must say)."""
    photo = sample_photo("chelsea")

    def ground(*args) -> list:
        return ["--model", models["ground"], *args]

    return {
        "missing file": (ground("--image", images["missing"], "--text", "a cat"), "image not found: "),
        "directory": (ground("--image", images["directory"], "--text", "a cat"), "is a directory"),
        "text file named .jpg": (ground("--image", images["text"], "--text", "a cat"), "not an image"),
        "truncated JPEG": (ground("--image", images["truncated"], "--text", "a cat"), "cannot decode image"),
        "zero-byte file": (ground("--image", images["empty"], "--text", "a cat"), "empty file (0 bytes)"),
        "bomb header": (ground("--image", images["bomb"], "--text", "a cat"), "possible decompression bomb"),
        "over --max-pixels": (ground("--image", photo, "--text", "a cat", "--max-pixels", "1000"),
                              "exceeds max_pixels=1000"),
        "no config": (["--model", models["no_config"], "--image", photo, "--text", "a"], "has no config.json"),
        "no weights": (["--model", models["no_weights"], "--image", photo, "--text", "a"], "has no weights"),
        "vqa on grounding": (ground("--task", "vqa", "--image", photo, "--text", "a cat"), "--task vqa does not fit"),
        "generate on classifier": (["--model", models["cls"], "--task", "generate", "--prompt", "hello"],
                                   "--task generate does not fit"),
        "empty text": (ground("--image", photo, "--text", "  "), "empty text"),
        "no image for a VL model": (ground("--text", "a cat"), "--image and --text are required"),
        "bad argument": (ground("--image", photo, "--text", "a", "--batch-size", "0"), "--batch-size"),
    }


def test_cli_every_bad_input_exits_2_with_one_clear_line(cli, models, images, capsys, caplog):
    """The CLI's own code path in-process (run_cli(main)): exit 2, one stderr line, no traceback."""
    for name, (argv, message) in _bad_cases(models, images).items():
        code = cli(*argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(lines) == 1 and ": error: " in lines[0] and message in lines[0], (name, lines)
    long_text = "a small red cat on the left of the box " * 5
    with caplog.at_level(logging.WARNING):
        assert cli("--model", models["ground"], "--image", sample_photo("chelsea"), "--text", long_text) == 0
    assert json.loads(capsys.readouterr().out)["truncated"] is True
    assert f"more than the model maximum of {MAX_TOKENS}" in caplog.text


def _subprocess(argv: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "tools/infer.py", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_as_a_subprocess_bad_inputs_and_a_long_text(models, images):
    """The real script, one process per bad input above: exit 2 with one "infer.py: error: ..." line and
    no traceback; a text over the model maximum is truncated with a warning and exit 0."""
    cases = _bad_cases(models, images)
    names = list(cases)
    long_text = ["--model", models["ground"], "--image", sample_photo("chelsea"), "--text", "a red cat " * 12]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(_subprocess, [cases[n][0] for n in names] + [long_text]))
    for name, run in zip(names, runs):
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2, (name, run.stderr)
        assert len(lines) == 1 and lines[0].startswith("infer.py: error: ") and cases[name][1] in lines[0], lines
        assert "Traceback" not in run.stderr and run.stdout == ""
    long_run = runs[-1]
    assert long_run.returncode == 0, long_run.stderr
    assert long_run.stderr.startswith("infer.py: WARNING: text has ") and "Traceback" not in long_run.stderr
    assert json.loads(long_run.stdout)["truncated"] is True
