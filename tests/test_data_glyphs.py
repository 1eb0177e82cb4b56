"""The glyphs family: one-colour tiles told apart by a small mark. Determinism, the (mark, shape)
hold-out, attributes read back from the drawn pixels, answers and referents from the scene, phrases,
distinguishable marks, and ``make-shards synthetic --family glyphs`` end to end."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlcoattn.cli.make_shards import main as make_shards_main
from vlcoattn.data.write.glyphs import (
    GLYPH_HOLDOUT,
    MARK_COLOR,
    MARKS,
    TILE_COLOR,
    TILE_SHAPES,
    draw_glyph,
    glyph_side,
)
from vlcoattn.data.write.synthetic import (
    SyntheticConfig,
    generate_scene,
    parse_holdout,
    render_scene,
    synthetic_samples,
)

SIZE = 128
CONFIG = SyntheticConfig(image_size=SIZE, holdout=GLYPH_HOLDOUT, family="glyphs")
N_SCENES = 40


@pytest.fixture(scope="module")
def scenes():
    return {split: [generate_scene(5, split, i, CONFIG) for i in range(N_SCENES)]
            for split in ("train", "val", "test", "holdout")}


def _mask(mark, side, pad=3):
    """The mark's pixels in its ``side`` x ``side`` box; nothing may be drawn outside the box."""
    image = Image.new("1", (side + 2 * pad, side + 2 * pad), 0)
    draw_glyph(ImageDraw.Draw(image), mark, pad, pad, side, 1)
    mask = np.asarray(image)
    assert mask.sum() == mask[pad:-pad, pad:-pad].sum(), mark
    return mask[pad:-pad, pad:-pad]


def _read_tile(pixels, box):
    """(shape, size, mark) of the tile drawn in ``box``, read from the pixels alone."""
    x0, y0, x1, y1 = box
    tile = pixels[y0:y1, x0:x1]
    shape = "square" if (tile[0, 0] == TILE_COLOR).all() else "circle"
    size = {13: "small", 18: "large"}[x1 - x0]
    light = (tile == MARK_COLOR).all(axis=-1)
    ys, xs = np.nonzero(light)
    glyph = light[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    g = glyph_side(x1 - x0)
    found = [m for m in MARKS if _crop(_mask(m, g)).shape == glyph.shape and (_crop(_mask(m, g)) == glyph).all()]
    assert len(found) == 1, (box, found)
    return shape, size, found[0]


def _crop(mask):
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def test_marks_differ_in_many_pixels_at_both_tile_sizes():
    for tile in (13, 18):  # small and large at 128 px
        g = glyph_side(tile)
        masks = {m: _mask(m, g) for m in MARKS}
        assert all(mask.any() for mask in masks.values())
        assert min(int((masks[a] != masks[b]).sum()) for a, b in itertools.combinations(MARKS, 2)) >= 18  # docs
    with pytest.raises(ValueError, match="unknown mark 'star'"):
        _mask("star", 8)


def test_same_seed_same_bytes_and_its_own_scenes():
    a = list(synthetic_samples("train", 4, 3, CONFIG))
    assert a == list(synthetic_samples("train", 4, 3, CONFIG))
    assert [x[1] for x in a] != [x[1] for x in synthetic_samples("train", 4, 4, CONFIG)]
    clevr = SyntheticConfig(image_size=SIZE)
    assert [x[1] for x in a] != [x[1] for x in synthetic_samples("train", 4, 3, clevr)]
    assert all("mark" in o and "color" not in o for x in a for o in x[3]["meta"]["objects"])


def test_drawn_pixels_give_boxes_and_attributes(scenes):
    """Each tile's pixels fill exactly its box; shape, size and mark read back from the image match meta."""
    objects = [o for split in scenes.values() for s in split for o in s.objects]
    assert {o.mark for o in objects} == set(MARKS) and {o.shape for o in objects} == set(TILE_SHAPES)
    for scene in scenes["train"][:25] + scenes["holdout"][:10]:
        pixels = np.asarray(render_scene(scene.objects, scene.background, SIZE)).astype(int)
        drawn = np.any(pixels != np.array(scene.background), axis=-1)
        covered = np.zeros_like(drawn)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            covered[y0:y1, x0:x1] = True
            ys, xs = np.nonzero(drawn[y0:y1, x0:x1])
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, x1 - x0, y1 - y0), obj
            assert x1 - x0 <= 18 and y1 - y0 <= 18  # small: within one stride-16 cell's span
            assert _read_tile(pixels, obj.box) == (obj.shape, obj.size, obj.mark)
        assert not (drawn & ~covered).any()


def test_holdout_pairs_only_in_the_holdout_split(scenes):
    held = set(GLYPH_HOLDOUT)
    for split in ("train", "val", "test"):
        assert not {(o.mark, o.shape) for s in scenes[split] for o in s.objects} & held
    for scene in scenes["holdout"]:
        assert {(o.mark, o.shape) for o in scene.objects} & held
        ref = next(r for _, r in scene.records if r["task"] == "ground")
        first = ref["meta"]["objects"][ref["meta"]["object"]]
        assert (first["mark"], first["shape"]) in held


# An independent reading of the programs in meta (none of the generator's helpers).
def _along(obj, direction):
    x0, y0, x1, y1 = obj["box"]
    return {"left": -(x0 + x1) / 2, "right": (x0 + x1) / 2, "above": -(y0 + y1) / 2, "below": (y0 + y1) / 2}[direction]


def _match(objects, desc):
    return [i for i, o in enumerate(objects) if all(o[k] == v for k, v in desc.items())]


def _words(desc, plural=False):
    return " ".join([desc[k] for k in ("size", "mark") if k in desc] + [desc.get("shape", "object") + "s" * plural])


def test_answers_referents_and_phrases_follow_from_the_scene(scenes):
    types = set()
    for scene in scenes["train"] + scenes["holdout"]:
        for _, record in scene.records:
            meta, program = record["meta"], record["meta"]["program"]
            objects, target = meta["objects"], program["target"]
            types.add((record["task"], meta["type"]))
            found = _match(objects, target)
            if "relation" in program:
                (anchor,) = _match(objects, program["relation"]["anchor"])
                d = program["relation"]["dir"]
                found = [i for i in found if i != anchor and _along(objects[i], d) > _along(objects[anchor], d)]
            if record["task"] == "ground":
                if "superlative" in program:
                    found = [max(found, key=lambda i: _along(objects[i], program["superlative"]))]
                assert found == [meta["object"]] and record["boxes"] == [objects[meta["object"]]["box"]]
                assert record["text"][slice(*record["phrases"][0]["span"])].endswith(_words(target))
                continue
            answer = record["answers"][0]
            expected = {"count": str(len(found)), "exists": "yes" if found else "no",
                        "spatial": "yes" if found else "no"}.get(meta["type"])
            if meta["type"] == "attribute":
                (i,) = found
                expected = objects[i][program["ask"]]
            assert answer == expected, record
            phrase = record["phrases"][0]
            assert record["text"][slice(*phrase["span"])].endswith(_words(target, meta["type"] == "count"))
            assert phrase["boxes"] == [objects[i]["box"] for i in _match(objects, target)]
    assert {t for task, t in types if task == "vqa"} == {"attribute", "count", "exists", "spatial"}
    assert {t for task, t in types if task == "ground"} == {"attribute", "relational", "superlative"}


def test_holdout_parsing_is_per_family():
    assert parse_holdout("cogent", "glyphs") == GLYPH_HOLDOUT
    assert parse_holdout("plus:circle", "glyphs") == (("plus", "circle"),)
    with pytest.raises(ValueError, match=r"bad hold-out pair 'red:circle': use mark:shape"):
        parse_holdout("red:circle", "glyphs")
    with pytest.raises(ValueError, match="not a known mark:shape"):
        SyntheticConfig(family="glyphs", holdout=(("red", "circle"),))
    with pytest.raises(ValueError, match="unknown scene family 'digits'"):
        SyntheticConfig(family="digits")
    every = tuple((m, s) for m in MARKS for s in TILE_SHAPES)
    with pytest.raises(ValueError, match="every mark:shape pair"):
        SyntheticConfig(family="glyphs", holdout=every)


def test_make_shards_writes_the_glyphs_family(tmp_path):
    from vlcoattn.data.read.loader import read_shard

    out = tmp_path / "glyphs"
    argv = ["synthetic", "--family", "glyphs", "--out", str(out), "--num", "6", "--split-holdout", "cogent",
            "--no-progress"]
    assert make_shards_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["holdout", "test", "train", "val"]
    info = json.loads((out / "train" / "dataset.json").read_text())
    assert info["options"]["family"] == "glyphs" and info["num_samples"] == 6 * 5
    assert set(MARKS) <= set(info["answer_vocab"]) and "red" not in info["answer_vocab"]
    expected = list(synthetic_samples("holdout", 1, 0, CONFIG))  # written in order (no shuffle)
    raws = list(read_shard(str(out / "holdout" / "shard-000000.tar"), 0, 5))
    assert len(expected) == 5
    for raw, (key, data, _, record) in zip(raws, expected, strict=True):
        assert raw["__key__"] == key and raw["png"] == data and json.loads(raw["json"]) == record
    assert Image.open(io.BytesIO(data)).size == (SIZE, SIZE)
    with pytest.raises(ValueError, match="bad hold-out pair 'red:circle'"):
        make_shards_main([*argv[:-3], "--split-holdout", "red:circle", "--overwrite"])


def test_the_trainer_generates_the_family_its_config_names(tmp_path):
    from vlcoattn.train.config import load_config
    from vlcoattn.train.job_config import JobConfig
    from vlcoattn.train.trainer import resolve_data

    job = load_config(JobConfig, None, [f"data.synthetic.dir={tmp_path}", "data.synthetic.num_scenes=10",
                                        "data.synthetic.family=glyphs", "run.progress=false"])
    resolve_data(job)
    assert set(job.data.test) == {"test", "holdout"}
    options = json.loads((tmp_path / "holdout" / "dataset.json").read_text())["options"]
    assert options["family"] == "glyphs" and [tuple(p) for p in options["holdout"]] == list(GLYPH_HOLDOUT)
