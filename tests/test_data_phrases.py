"""Phrases: the schema's ``phrases`` field, carried through decoding, crops and flips; CLEVR-lite's
phrases from its programs (and its outputs otherwise unchanged); the scene captions."""

from __future__ import annotations

import hashlib
import io
import json
import re

import pytest
import torch
from PIL import Image
from torchvision.ops import box_convert

from vlcoattn.data.read.pipeline import Collator, SampleDecoder
from vlcoattn.data.read.transforms import (
    ImageTransform,
    follow_spans,
    letterbox_params,
    swap_left_right,
    swap_left_right_spans,
)
from vlcoattn.data.schema import FIELDS, check_record, keep_unknown_fields, phrase_types, sample_problems
from vlcoattn.data.write.synthetic import (
    SIZES,
    SyntheticConfig,
    generate_scene,
    parse_holdout,
    scene_caption,
    synthetic_samples,
)

from helpers import processor_for

TEXT = "the red square left of the blue circle"
RED, BLUE = [4, 6, 20, 22], [30, 8, 44, 30]


def _record(**changes):
    record = {"task": "ground", "text": TEXT, "boxes": [RED],
              "phrases": [{"span": [0, 14], "boxes": [RED], "type": "target"},
                          {"span": [23, 38], "boxes": [BLUE], "type": "anchor", "id": "7"}]}
    record.update(changes)
    return record


def _phrases(*phrases):
    return _record(phrases=list(phrases))


# ----------------------------------------------------------------------------- schema


def test_valid_phrases_pass_and_a_phrase_without_box_is_allowed():
    assert sample_problems(_record(), image_size=(48, 48)) == []
    assert sample_problems(_phrases({"span": [4, 14], "boxes": []}), image_size=(48, 48)) == []
    assert sample_problems({"task": "vqa", "text": "Is there a cat?", "answers": ["no"],
                            "phrases": [{"span": [9, 14], "boxes": []}]}) == []
    assert "phrases" in FIELDS and keep_unknown_fields(_record()) == _record()  # not moved under meta
    assert phrase_types({"type": "bodyparts/people"}) == ["bodyparts", "people"]
    assert phrase_types({"span": [0, 1]}) == []


@pytest.mark.parametrize("phrases, reason, words", [
    ("x", "bad_field", "'phrases' must be a list"),
    (["x"], "bad_field", "phrases[0] must be an object"),
    ([{"span": [0, 3]}], "bad_field", "phrases[0] needs 'boxes'"),
    ([{"span": [0, 3], "boxes": [], "box": []}], "bad_field", "phrases[0] has unknown keys ['box']"),
    ([{"span": [0], "boxes": []}], "bad_field", "phrases[0].span must be [start, end]"),
    ([{"span": [0.0, 3], "boxes": []}], "bad_field", "phrases[0].span must be [start, end]"),
    ([{"span": [30, 39], "boxes": []}], "bad_field", "phrases[0].span [30, 39] lies outside the text"),
    ([{"span": [5, 5], "boxes": []}], "bad_field", "phrases[0].span [5, 5] lies outside the text"),
    ([{"span": [3, 7], "boxes": []}], "bad_field", "' red' must start and end on a non-space"),
    ([{"span": [0, 14], "boxes": []}, {"span": [4, 7], "boxes": []}], "bad_field",
     "phrases[1].span [4, 7] overlaps phrases[0].span [0, 14]"),
    ([{"span": [0, 3], "boxes": [[1, 2, 3]]}], "bad_box", "phrases[0].boxes[0] must be 4 numbers"),
    ([{"span": [0, 3], "boxes": [[5, 5, 5, 9]]}], "bad_box", "phrases[0].boxes[0] = [5, 5, 5, 9] is empty"),
    ([{"span": [0, 3], "boxes": [[0, 0, 60, 9]]}], "bad_box", "phrases[0].boxes[0] = [0, 0, 60, 9] lies outside"),
    ([{"span": [0, 3], "boxes": [], "type": ""}], "bad_field", "phrases[0].type must be a non-empty string"),
    ([{"span": [0, 3], "boxes": [], "id": 7}], "bad_field", "phrases[0].id must be a non-empty string"),
])
def test_each_phrase_problem_is_named(phrases, reason, words):
    problems = sample_problems(_record(phrases=phrases), image_size=(48, 48))
    assert len(problems) == 1 and problems[0][0] == reason and words in problems[0][1], problems


# ----------------------------------------------------------------------------- flips rewrite the text


def test_swapped_spans_cover_the_swapped_words():
    text = "the Leftmost circle right of the LEFT square, left-hand side"
    spans = [(0, 19), (20, 28), (29, 44), (46, 60), (4, 8), (5, 7), (6, 10)]  # the last two: edges inside "Left"
    new, moved = swap_left_right_spans(text, spans)
    assert new == swap_left_right(text) == "the Rightmost circle left of the RIGHT square, right-hand side"
    for (a, b), (c, d) in zip(spans[:4], moved[:4]):
        assert new[c:d] == swap_left_right(text[a:b])  # whole words: the span's words, swapped
    assert moved[4] == (4, 9) and new[4:9] == "Right"
    assert moved[5] == (4, 9) and moved[6] == (4, 11)  # an edge inside a swapped word goes to its edge
    assert follow_spans(text, text, spans) == spans
    assert follow_spans(text, new, spans) == moved
    with pytest.raises(ValueError, match="neither"):
        follow_spans(text, text.upper(), spans)


# ----------------------------------------------------------------------------- decoding


def _png(size=(48, 40)):
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _raw(record, key="k0", size=(48, 40)):
    return {"__key__": key, "json": json.dumps(record).encode(), "png": _png(size)}


def _cxcywh(xyxy, size, image_size=(48, 40)):
    """Independent letterbox of xyxy pixels onto a ``size`` canvas, as normalized cxcywh."""
    lb = letterbox_params(*image_size, size)
    box = torch.tensor(xyxy, dtype=torch.float64).reshape(-1, 4)
    box = box * torch.tensor([lb.scale_x, lb.scale_y] * 2) + torch.tensor([lb.pad_x, lb.pad_y] * 2)
    return box_convert(box, "xyxy", "cxcywh") / size


def test_the_decoder_carries_phrases_letterboxed_and_the_collator_batches_them(minilm_tokenizer):
    record = _record(phrases=[*_record()["phrases"], {"span": [15, 19], "boxes": []}])
    decoder = SampleDecoder(ImageTransform((32, 32), (0, 0, 0)))
    sample = decoder(_raw(record))
    assert [p["span"] for p in sample["phrases"]] == [(0, 14), (23, 38), (15, 19)]
    assert sample["phrases"][1]["type"] == "anchor" and sample["phrases"][1]["id"] == "7"
    assert "type" not in sample["phrases"][2] and sample["phrases"][2]["boxes"].shape == (0, 4)
    for phrase, boxes in zip(sample["phrases"], (RED, BLUE)):
        torch.testing.assert_close(phrase["boxes"].double(), _cxcywh(boxes, 32), atol=1e-6, rtol=0)
    torch.testing.assert_close(sample["box"].double(), _cxcywh(RED, 32)[0], atol=1e-6, rtol=0)
    plain = decoder(_raw({k: v for k, v in record.items() if k != "phrases"}, key="k1"))
    assert "phrases" not in plain
    collator = Collator(minilm_tokenizer, processor_for(minilm_tokenizer, 32).image_processor)
    batch = collator([sample, plain])
    assert batch["phrases"][0] is sample["phrases"] and batch["phrases"][1] == []
    assert "phrases" not in collator([plain])


def test_flips_move_phrase_boxes_and_spans_with_the_text():
    decoder = SampleDecoder(ImageTransform((32, 32), (0, 0, 0), augment=True, jitter=0.0), seed=3)
    flips = 0
    for k in range(12):
        sample = decoder(_raw(_record(), key=f"k{k}"))
        flipped = sample["text"] != TEXT
        flips += flipped
        assert sample["text"] == (swap_left_right(TEXT) if flipped else TEXT)
        for phrase, original, boxes in zip(sample["phrases"], _record()["phrases"], (RED, BLUE)):
            words = sample["text"][slice(*phrase["span"])]
            assert words == TEXT[slice(*original["span"])]  # "the red square" and "the blue circle" stay
            expected = _cxcywh(boxes, 32)
            if flipped:
                expected[:, 0] = 1 - expected[:, 0]
            torch.testing.assert_close(phrase["boxes"].double(), expected, atol=1e-6, rtol=0)
    assert 0 < flips < 12
    # a phrase containing the swapped word follows it: "left of" -> "right of" (one character longer)
    record = _phrases({"span": [15, 22], "boxes": []}, {"span": [23, 38], "boxes": [BLUE]})
    samples = [decoder(_raw(record, key=f"k{k}")) for k in range(12)]
    mirrored = next(s for s in samples if s["text"] != TEXT)
    assert [mirrored["text"][slice(*p["span"])] for p in mirrored["phrases"]] == ["right of", "the blue circle"]


def test_a_crop_keeps_every_phrase_box_whole():
    """A VQA sample has no ``boxes``: its phrases' boxes alone decide the crop, and stay whole in it."""
    record = {"task": "vqa", "text": TEXT + "?", "answers": ["yes"], "phrases": _record()["phrases"]}
    decoder = SampleDecoder(ImageTransform((40, 40), (0, 0, 0), augment=True, jitter=0.0, crop_min_scale=0.3))
    sizes = set()
    for k in range(10):
        sample = decoder(_raw(record, key=f"k{k}", size=(48, 48)))
        lb = sample["letterbox"]
        sizes.add(round(float(lb[0]), 4))  # scale_x: the crop's width decides it
        for phrase, boxes in zip(sample["phrases"], (RED, BLUE)):
            w, h = (boxes[2] - boxes[0]) * lb[0] / 40, (boxes[3] - boxes[1]) * lb[1] / 40
            torch.testing.assert_close(phrase["boxes"][0, 2:].double(), torch.stack([w, h]).double(),
                                       atol=1e-5, rtol=0)  # whole: the box keeps its size, scaled
    assert len(sizes) > 1  # cropped at several scales


# ----------------------------------------------------------------------------- CLEVR-lite


def _digest(split, n, config):
    """Everything the generator wrote before phrases existed: keys, image bytes, texts, answers, boxes, meta."""
    h = hashlib.sha256()
    count = 0
    for key, data, ext, record in synthetic_samples(split, n, 3, config):
        kept = {k: v for k, v in record.items() if k != "phrases"}
        h.update(key.encode() + data + ext.encode() + json.dumps(kept, sort_keys=True).encode())
        count += 1
    return count, h.hexdigest()


def test_phrases_leave_every_other_output_byte_identical():
    """Digests of the generator's output before the phrases were added (computed with that code): the
    phrases consume no random numbers, so images, texts, answers, boxes and meta are unchanged."""
    assert _digest("train", 60, SyntheticConfig()) == (
        300, "035511267b7f51609d9be98ccbaac6e11080c8f0781bd383ad90bd5ece2ff78f")
    holdout = SyntheticConfig(image_size=96, holdout=parse_holdout("cogent"), image_format="jpg")
    assert _digest("holdout", 40, holdout) == (
        200, "5516e62f734db68b823ca50558ecc5360dbcf8766e45079e1f26ce2714ee355b")


def _named(objects, desc):
    return [o["box"] for o in objects if all(o[k] == v for k, v in desc.items())]


def _noun(desc, plural=False):
    words = [desc[k] for k in ("size", "color") if k in desc] + [desc.get("shape", "object") + "s" * plural]
    return " ".join(words)


def _expected_phrases(record):
    """(words, boxes, type) of each phrase, read from the program in meta independently of the generator."""
    meta, program = record["meta"], record["meta"]["program"]
    objects, target = meta["objects"], program["target"]
    if record["task"] == "ground":
        referent = [objects[meta["object"]]["box"]]
        if "superlative" in program:
            sup = {"left": "leftmost", "right": "rightmost", "above": "topmost", "below": "bottommost"}
            return [(f"the {sup[program['superlative']]} {_noun(target)}", referent, "target")]
        found = [("the " + _noun(target), referent, "target")]
    elif meta["type"] == "count":
        return [(_noun(target, plural=True), _named(objects, target), "target")]
    elif meta["type"] == "exists":
        return [("a " + _noun(target), _named(objects, target), "target")]
    else:
        found = [("the " + _noun(target), _named(objects, target), "target")]
    if "relation" in program:
        anchor = program["relation"]["anchor"]
        found.append(("the " + _noun(anchor), _named(objects, anchor), "anchor"))
    return found


def test_questions_and_expressions_carry_the_phrases_of_their_programs():
    config = SyntheticConfig(image_size=96)
    kinds = set()
    for index in range(40):
        scene = generate_scene(5, "train", index, config)
        for _, record in scene.records:
            assert check_record(record, has_image=True, image_size=(96, 96))
            got = [(record["text"][slice(*p["span"])], p["boxes"], p["type"]) for p in record["phrases"]]
            assert got == _expected_phrases(record), record["text"]
            kinds.add((record["meta"]["type"], len(got)))
            if record["meta"]["type"] == "count":
                assert len(got[0][1]) == int(record["answers"][0])
            if record["meta"]["type"] == "exists":
                assert bool(got[0][1]) == (record["answers"] == ["yes"])
    assert {("spatial", 2), ("relational", 2), ("superlative", 1), ("attribute", 1), ("count", 1)} <= kinds


def test_a_scene_caption_names_every_object_once_left_to_right():
    config = SyntheticConfig(image_size=96)
    joins = set()
    for index in range(30):
        objects = generate_scene(2, "val", index, config).objects
        text, phrases = scene_caption(objects, config.image_size)
        assert check_record({"task": "ground", "text": text, "boxes": [[0, 0, 1, 1]], "phrases": phrases},
                            image_size=(96, 96))
        assert sorted(int(p["id"]) for p in phrases) == list(range(len(objects)))
        centers = []
        for p in phrases:
            obj = objects[int(p["id"])]
            assert text[slice(*p["span"])] == f"a {obj.size} {obj.color} {obj.shape}"
            assert p["boxes"] == [list(obj.box)]
            centers.append((obj.box[0] + obj.box[2]) / 2)
        assert centers == sorted(centers)
        gaps = re.split(r"a (?:small|large) \w+ \w+", text)[1:-1]
        assert len(gaps) == len(objects) - 1
        for gap, left, right in zip(gaps, centers, centers[1:]):
            joins.add(gap)
            assert gap == (" left of " if right - left >= 0.04 * 96 else " and ")
    assert joins == {" left of ", " and "}
    assert set(SIZES) == {"small", "large"}  # the pattern above names every size


def test_synthetic_shards_decode_with_their_phrases(tmp_path):
    from vlcoattn.data.read.loader import read_shard
    from vlcoattn.data.write.converters import write_synthetic

    write_synthetic(tmp_path, 3, seed=0, config=SyntheticConfig(image_size=48), progress=False)
    decoder = SampleDecoder(ImageTransform((48, 48), (0, 0, 0)))
    raws = list(read_shard(str(tmp_path / "train" / "shard-000000.tar"), 0, 15))
    assert raws
    for raw in raws:
        record, sample = json.loads(raw["json"]), decoder(raw)
        assert [list(p["span"]) for p in sample["phrases"]] == [p["span"] for p in record["phrases"]]
        for phrase, original in zip(sample["phrases"], record["phrases"]):
            if original["boxes"]:
                expected = box_convert(torch.tensor(original["boxes"], dtype=torch.float32), "xyxy", "cxcywh") / 48
                torch.testing.assert_close(phrase["boxes"], expected)


# ----------------------------------------------------------------------------- inspect


def test_inspect_counts_lists_and_draws_the_phrases(tmp_path):
    import matplotlib.pyplot as plt

    from vlcoattn.data.write.converters import write_synthetic
    from vlcoattn.data.write.inspection import inspect_shards
    from vlcoattn.train.report import _draw_phrases, plot_examples

    config = SyntheticConfig(image_size=48)
    write_synthetic(tmp_path, 4, seed=0, config=config, progress=False)
    records = {key: record for key, _, _, record in synthetic_samples("train", 4, 0, config)}
    phrases = [p for r in records.values() for p in r["phrases"]]
    found = inspect_shards(str(tmp_path / "train"), show=3, image_size=48, progress=False)
    without = sum(not p["boxes"] for p in phrases)
    report = found.report()
    assert f"phrases: {len(phrases)} in {len(records)} samples ({without} without a box)" in report
    targets = sum(p["type"] == "target" for p in phrases)
    assert f"phrase types: target {targets}, anchor {len(phrases) - targets}" in report
    for preview in found.previews:
        record = records[preview["key"]]
        assert [p["text"] for p in preview["phrases"]] == [record["text"][slice(*p["span"])] for p in record["phrases"]]
        for shown, phrase in zip(preview["phrases"], record["phrases"]):  # a 48 px image on a 48 px canvas
            torch.testing.assert_close(torch.tensor(shown["boxes"]).reshape(-1, 4),
                                       torch.tensor(phrase["boxes"], dtype=torch.float32).reshape(-1, 4))
        listed = "; ".join(f"[{p['text']}] {len(p['boxes'])} box(es)" for p in preview["phrases"])
        assert f"  {preview['key']}: {record['text']!r}: {listed}" in report.splitlines()
    shown = [p for preview in found.previews for p in preview["phrases"]]
    fig, ax = plt.subplots()
    _draw_phrases(ax, shown)
    assert len(ax.patches) == sum(len(p["boxes"]) for p in shown)
    assert [t.get_text() for t in ax.texts] == [p["text"] for p in shown for _ in p["boxes"]]
    colours = [tuple(patch.get_edgecolor()) for patch in ax.patches]
    assert len(set(colours)) == min(10, sum(bool(p["boxes"]) for p in shown))  # one colour per phrase
    plt.close(fig)
    assert plot_examples(found.previews, tmp_path / "inspect.png").stat().st_size > 0


def test_jsonl_phrase_boxes_follow_the_box_format_and_the_downscale(tmp_path):
    from vlcoattn.data.read.loader import read_shard
    from vlcoattn.data.write.converters import convert_jsonl

    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 48), (0, 90, 0)).save(tmp_path / "img" / "a.png")
    record = {"image": "a.png", "task": "ground", "text": TEXT, "boxes": [[4, 6, 16, 16]],  # xywh
              "phrases": [{"span": [0, 14], "boxes": [[4, 6, 16, 16]]},
                          {"span": [23, 38], "boxes": [[30, 8, 14, 22], [40, 2, 20, 10]], "type": "anchor"}]}
    (tmp_path / "in.jsonl").write_text(json.dumps(record) + "\n")
    info = convert_jsonl(tmp_path / "in.jsonl", tmp_path / "img", tmp_path / "out", box_format="xywh",
                         max_side=32, progress=False)
    assert info.num_samples == 1 and not info.skipped
    (raw,) = read_shard(str(tmp_path / "out" / "shard-000000.tar"), 0, 1)
    written = json.loads(raw["json"])
    half = [[2, 3, 10, 11]]  # [x, y, x + w, y + h] / 2
    assert written["boxes"] == half and written["phrases"][0]["boxes"] == half
    assert written["phrases"][1] == {"span": [23, 38], "boxes": [[15, 4, 22, 15], [20, 1, 30, 6]], "type": "anchor"}
