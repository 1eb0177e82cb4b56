"""CLEVR-lite generator: determinism, exact boxes, unique referents, correct answers, hold-out."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vlcoattn.data.write.synthetic import (
    ANSWERS,
    BACKGROUNDS,
    COGENT_HOLDOUT,
    COLORS,
    SyntheticConfig,
    generate_scene,
    parse_holdout,
    render_scene,
    synthetic_samples,
)

CONFIG = SyntheticConfig(image_size=96, holdout=COGENT_HOLDOUT)
N_SCENES = 60


@pytest.fixture(scope="module")
def scenes():
    return {
        split: [generate_scene(7, split, i, CONFIG) for i in range(N_SCENES)]
        for split in ("train", "val", "test", "holdout")
    }


# An independent reading of the programs stored in meta (does not use the generator's helpers).
def _center(obj):
    x0, y0, x1, y1 = obj["box"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def _along(obj, direction):
    cx, cy = _center(obj)
    return {"left": -cx, "right": cx, "above": -cy, "below": cy}[direction]


def _match(objects, desc):
    return [i for i, o in enumerate(objects) if all(o[k] == v for k, v in desc.items())]


def _denotes(objects, program):
    found = _match(objects, program["target"])
    if "relation" in program:
        (anchor,) = _match(objects, program["relation"]["anchor"])
        d = program["relation"]["dir"]
        found = [i for i in found if i != anchor and _along(objects[i], d) > _along(objects[anchor], d)]
    if "superlative" in program:
        found = [max(found, key=lambda i: _along(objects[i], program["superlative"]))]
    return found


def _words(desc):
    return [desc.get("size"), desc.get("color"), desc.get("shape", "object")]


def test_same_seed_same_bytes_other_seed_other_scenes():
    a = list(synthetic_samples("train", 5, 3, CONFIG))
    b = list(synthetic_samples("train", 5, 3, CONFIG))
    c = list(synthetic_samples("train", 5, 4, CONFIG))
    assert a == b
    assert [x[1] for x in a] != [x[1] for x in c]
    # scenes are independent of how many are generated
    assert list(synthetic_samples("train", 2, 3, CONFIG)) == [x for x in a if x[0] < "train-0000002"]


def test_variety_and_non_overlap(scenes):
    objs = [o for split in scenes.values() for s in split for o in s.objects]
    assert len({o.shape for o in objs}) >= 3 and len({o.color for o in objs}) >= 6
    assert {o.size for o in objs} == {"small", "large"}
    for split in scenes.values():
        for s in split:
            assert 2 <= len(s.objects) <= 6
            for a in s.objects:
                for b in s.objects:
                    if a is not b:
                        assert (
                            a.box[2] <= b.box[0]
                            or b.box[2] <= a.box[0]
                            or a.box[3] <= b.box[1]
                            or b.box[3] <= a.box[1]
                        )


def test_boxes_are_tight_around_the_drawn_pixels(scenes):
    for scene in scenes["train"][:30]:
        pixels = np.asarray(render_scene(scene.objects, scene.background, CONFIG.image_size)).astype(int)
        drawn = np.any(pixels != np.array(scene.background), axis=-1)
        covered = np.zeros_like(drawn)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            covered[y0:y1, x0:x1] = True
            mine = np.all(pixels[y0:y1, x0:x1] == COLORS[obj.color], axis=-1)
            ys, xs = np.nonzero(mine)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, x1 - x0, y1 - y0), obj
        assert not (drawn & ~covered).any()  # nothing drawn outside the boxes
    assert all(bg not in COLORS.values() for bg in BACKGROUNDS)


def test_encoded_png_matches_render_and_box_in_record():
    _key, data, ext, record = next(
        s for s in synthetic_samples("val", 3, 1, CONFIG) if s[3]["task"] == "ground"
    )
    assert ext == "png" and Image.open(io.BytesIO(data)).size == (96, 96)
    obj = record["meta"]["objects"][record["meta"]["object"]]
    assert record["boxes"] == [obj["box"]]


def test_every_referring_expression_has_exactly_one_referent(scenes):
    kinds = Counter()
    for split in scenes.values():
        for scene in split:
            objects = scene.records[0][1]["meta"]["objects"]
            for _, r in scene.records:
                if r["task"] != "ground":
                    continue
                meta = r["meta"]
                kinds[meta["type"]] += 1
                assert _denotes(objects, meta["program"]) == [meta["object"]], r["text"]
                assert r["boxes"] == [objects[meta["object"]]["box"]]
                for word in _words(meta["program"]["target"]):
                    assert word is None or word in r["text"]
    assert min(kinds[k] for k in ("attribute", "relational", "superlative")) >= 5, kinds


def test_answers_follow_from_the_scene(scenes):
    types = Counter()
    for split in scenes.values():
        for scene in split:
            for _, r in scene.records:
                if r["task"] != "vqa":
                    continue
                meta, (answer,) = r["meta"], r["answers"]
                objects, program = meta["objects"], meta["program"]
                types[meta["type"]] += 1
                assert answer in ANSWERS
                matches = _match(objects, program["target"])
                if meta["type"] == "count":
                    assert answer == str(len(matches))
                elif meta["type"] == "exists":
                    assert answer == ("yes" if matches else "no")
                elif meta["type"] == "attribute":
                    assert len(matches) == 1 and objects[matches[0]][program["ask"]] == answer
                else:
                    (a,) = matches
                    (b,) = _match(objects, program["relation"]["anchor"])
                    d = program["relation"]["dir"]
                    assert answer == ("yes" if _along(objects[a], d) > _along(objects[b], d) else "no")
    assert set(types) == {"attribute", "count", "exists", "spatial"} and min(types.values()) >= 20, types


def test_holdout_pairs_never_in_train_val_test_always_in_holdout(scenes):
    held = set(COGENT_HOLDOUT)
    for split in ("train", "val", "test"):
        for scene in scenes[split]:
            assert not {(o.color, o.shape) for o in scene.objects} & held
    for scene in scenes["holdout"]:
        assert {(o.color, o.shape) for o in scene.objects} & held
        refs = [r for _, r in scene.records if r["task"] == "ground"]
        first = refs[0]["meta"]["objects"][refs[0]["meta"]["object"]]
        assert (first["color"], first["shape"]) in held  # expressions target the new combinations first


def test_holdout_parsing_and_config_errors():
    assert parse_holdout("cogent") == COGENT_HOLDOUT
    assert parse_holdout("red:circle, blue:square") == (("red", "circle"), ("blue", "square"))
    assert parse_holdout(None) == ()
    with pytest.raises(ValueError, match="bad hold-out pair"):
        parse_holdout("pink:circle")
    with pytest.raises(ValueError, match="needs hold-out pairs"):
        generate_scene(0, "holdout", 0, SyntheticConfig())
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticConfig(min_objects=1)
