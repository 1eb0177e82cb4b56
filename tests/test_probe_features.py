"""vlcoattn-probe-features: label sources, box pooling, the probe on CLEVR-lite shards, the recommendation, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from vlcoattn import VLCoAttnForMultitask, VLCoAttnProcessor
from vlcoattn.assets import minilm_dir
from vlcoattn.cli.probe_features import main as probe_main
from vlcoattn.data import SyntheticConfig, generate_scene, write_synthetic
from vlcoattn.probe import (
    AttributeSource,
    ProbeReport,
    ProbeResult,
    ProbeScore,
    build_backbone,
    collect_objects,
    is_heldout,
    pool_boxes,
    probe_features,
    read_samples,
)
from vlcoattn.utils.cli import run_cli

from helpers import tiny_config

SCENES = 40
CONFIG = SyntheticConfig(image_size=64)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Tiny CLEVR-lite shards from the project's writer: train (40 scenes) and val (4)."""
    root = tmp_path_factory.mktemp("probe") / "clevr"
    write_synthetic(root, SCENES, seed=0, config=CONFIG, progress=False)
    return root


@pytest.fixture(scope="module")
def backbone():
    """EfficientNet-Lite0 with its ImageNet weights (the local asset), at strides 8 and 32."""
    return build_backbone("tf_efficientnet_lite0", [8, 32])[0]


# ------------------------------------------------------------------------------------------ label sources

RECORD = {"task": "ground", "text": " the red circle ", "answers": ["red", "blue", "red"], "label": "thing",
          "boxes": [[1, 2, 10, 12], [20, 20, 30, 30]],
          "meta": {"category": "circle", "info": {"id": 7},
                   "objects": [{"color": "red", "box": [1, 2, 10, 12]}, {"color": "blue", "box": [5, 5, 9, 9]},
                               {"shape": "square", "box": [0, 0, 4, 4]}]}}


@pytest.mark.parametrize("spec,expected", [
    ("text", [((1.0, 2.0, 10.0, 12.0), "the red circle"), ((20.0, 20.0, 30.0, 30.0), "the red circle")]),
    ("answer", [((1.0, 2.0, 10.0, 12.0), "red"), ((20.0, 20.0, 30.0, 30.0), "red")]),
    ("label", [((1.0, 2.0, 10.0, 12.0), "thing"), ((20.0, 20.0, 30.0, 30.0), "thing")]),
    ("meta.category", [((1.0, 2.0, 10.0, 12.0), "circle"), ((20.0, 20.0, 30.0, 30.0), "circle")]),
    ("meta.info.id", [((1.0, 2.0, 10.0, 12.0), "7"), ((20.0, 20.0, 30.0, 30.0), "7")]),
    ("meta.objects[].color", [((1.0, 2.0, 10.0, 12.0), "red"), ((5.0, 5.0, 9.0, 9.0), "blue")]),  # no colour: skipped
    ("meta.nothing", []),
    ("meta.objects[].size", []),
])
def test_each_label_source_finds_its_boxes_and_labels(spec, expected):
    assert AttributeSource.parse(spec).objects(RECORD) == expected


@pytest.mark.parametrize("spec", ["colour", "meta", "meta.", "meta.objects[]", "meta.objects[]color",
                                  "meta.a[].b[].c", "meta..x", "meta.objects[].", "Text"])
def test_a_bad_label_source_is_refused_with_the_forms_it_may_take(spec):
    with pytest.raises(ValueError, match=r"use text, answer, label, meta\.KEY"):
        AttributeSource.parse(spec)


def test_a_non_label_value_or_a_listed_object_without_box_is_refused():
    with pytest.raises(ValueError, match=r"'meta.info'.*a dict, not a label"):
        AttributeSource.parse("meta.info").objects(RECORD)
    bad = {**RECORD, "meta": {"objects": [{"color": "red", "box": [5, 5, 1, 9]}]}}
    with pytest.raises(ValueError, match=r"listed object #0 has no valid 'box'"):
        AttributeSource.parse("meta.objects[].color").objects(bad)


def test_objects_described_by_several_samples_of_an_image_count_once(shards):
    """CLEVR-lite writes the scene's objects into each of its samples: each object is kept once, so the
    objects found are the generator's scenes' objects, and the images are the scenes."""
    found = collect_objects(read_samples(str(shards / "train")), ["meta.objects[].color", "text"])
    scenes = [generate_scene(0, "train", i, CONFIG) for i in range(SCENES)]
    assert len(found.images) == SCENES
    assert sorted(label for _, _, label in found.objects["meta.objects[].color"]) == sorted(
        o.color for s in scenes for o in s.objects)
    expressions = [r["text"] for s in scenes for _, r in s.records if r["task"] == "ground"]
    assert sorted(label for _, _, label in found.objects["text"]) == sorted(expressions)
    assert found.samples == sum(len(s.records) for s in scenes)
    assert len(list(read_samples(str(shards / "train"), max_samples=7))) == 7


# ------------------------------------------------------------------------------------------ pooling


def test_box_pooling_matches_a_direct_cell_by_cell_computation():
    """Mean: the cells whose pixel span overlaps the box; centre: the cell holding the box's centre."""
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(5, 4, 6, generator=g)  # a 4x6 grid on a 64x96 canvas: 16 px cells
    boxes = np.array([[0, 0, 96, 64], [17, 3, 40, 30], [50, 50, 52, 53], [0, 0, 1, 1], [95, 63, 96, 64]], float)
    mean, center = (pool_boxes(feature, boxes, (64, 96), pool) for pool in ("mean", "center"))
    for box, m, c in zip(boxes, mean, center):
        x0, y0, x1, y1 = box
        cells = [(r, q) for r in range(4) for q in range(6)
                 if y0 < (r + 1) * 16 and y1 > r * 16 and x0 < (q + 1) * 16 and x1 > q * 16]
        np.testing.assert_allclose(m, np.mean([feature[:, r, q].numpy() for r, q in cells], 0), rtol=1e-5)
        np.testing.assert_allclose(c, feature[:, int((y0 + y1) / 32), int((x0 + x1) / 32)].numpy())
    with pytest.raises(ValueError, match="pool must be one of"):
        pool_boxes(feature, boxes, (64, 96), "max")


# ------------------------------------------------------------------------------------------ the probe


def test_the_probe_reads_colour_far_above_chance_where_it_is_visible(shards, backbone):
    """At stride 8 (8x8 cells on 64 px) the objects' colour is read almost perfectly on held-out images;
    at stride 32 (2x2 cells), where each cell mixes several objects, far less. The split is by image."""
    found = collect_objects(read_samples(str(shards / "train")), ["meta.objects[].color"])
    report = probe_features(backbone, found, [(64, 64)], progress=False)
    fine, coarse = (next(r for r in report.results if r.stride == s) for s in (8, 32))
    assert fine.grid == (8, 8) and coarse.grid == (2, 2)
    assert fine.score.heldout >= 0.8 and fine.score.heldout >= fine.score.chance + 0.5, fine
    assert coarse.score.heldout < fine.score.heldout - 0.3, (coarse, fine)
    held = [is_heldout(image) for image, _, _ in found.objects["meta.objects[].color"]]
    assert fine.score.heldout_objects == sum(held) and 0 < sum(held) < len(held)
    labels = [label for (_, _, label), h in zip(found.objects["meta.objects[].color"], held) if not h]
    majority = max(set(labels), key=labels.count)
    expected = np.mean([label == majority for (_, _, label), h in zip(found.objects["meta.objects[].color"], held) if h])
    assert fine.score.chance == pytest.approx(expected)
    assert report.recommendation()["all"] == ((64, 64), 8)


def test_a_per_sample_meta_label_reads_as_well_as_the_scene_list(shards, backbone):
    """RefCOCO-style shards name the referred object's category in each sample's meta: the same colours,
    labelled per grounding sample (``meta.category``) instead of per listed object, read as well."""
    def as_refcoco(record):
        category = record["meta"]["objects"][record["meta"]["object"]]["color"]
        return {**record, "meta": {"category": category}}

    samples = [(data, as_refcoco(r)) for data, r in read_samples(str(shards / "train")) if r["task"] == "ground"]
    found = collect_objects(samples, ["meta.category"])
    report = probe_features(backbone, found, [(64, 64)], pool="center", progress=False)
    fine = next(r for r in report.results if r.stride == 8)
    assert fine.score.heldout >= fine.score.chance + 0.4, fine


def _result(size, stride, attribute, heldout, chance=0.2):
    return ProbeResult((size, size), stride, (size // stride,) * 2, attribute, ProbeScore(1.0, heldout, chance, 70, 30, 4))


def test_the_recommendation_is_the_cheapest_setting_within_the_tolerance_of_the_best():
    results = [_result(64, 8, "a", 0.90), _result(64, 16, "a", 0.70), _result(128, 8, "a", 0.95),
               _result(128, 16, "a", 0.94), _result(64, 8, "b", 0.25), _result(64, 16, "b", 0.21),
               _result(128, 8, "b", 0.21), _result(128, 16, "b", 0.22)]
    report = ProbeReport(results, "mean", "by image", tolerance=0.02)
    rec = report.recommendation()
    # a: best 0.95; within 2 points: (128, 8) and (128, 16); the coarser wins. b: best 0.25 only at (64, 8)
    assert rec["per_attribute"] == {"a": ((128, 128), 16), "b": ((64, 64), 8)}
    assert rec["all"] is None and rec["unread"] == []
    # within 6 points: (64, 8) serves both; b alone takes the coarser (64, 16), and its best is 5 over chance
    assert ProbeReport(results, "mean", "by image", tolerance=0.06).recommendation() == {
        "all": ((64, 64), 8), "per_attribute": {"a": ((64, 64), 8), "b": ((64, 64), 16)}, "unread": ["b"]}


def test_a_trained_model_dir_gives_its_own_backbone_weights_and_input_size(tmp_path):
    """A model dir's backbone is probed as trained (here: random weights, not ImageNet's), at its image size;
    a level past where its backbone ends is refused."""
    model = VLCoAttnForMultitask(tiny_config(vision_config={"image_size": [48, 64]},
                                             heads_config={"answer_vocab": ["a", "b"]}))
    model.save_pretrained(tmp_path / "model")
    VLCoAttnProcessor.for_model(model, AutoTokenizer.from_pretrained(minilm_dir())).save_pretrained(tmp_path / "model")
    probed, size = build_backbone(str(tmp_path / "model"), [8])
    assert probed.strides == [8] and size == (48, 64)
    trained = model.base_model.backbone.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in probed.model.state_dict().items())
    with pytest.raises(ValueError, match="the model's backbone ends at stride 8"):
        build_backbone(str(tmp_path / "model"), [32])


# ------------------------------------------------------------------------------------------ the CLI


def test_the_cli_end_to_end_with_a_held_out_split(shards, tmp_path, capsys):
    code = probe_main(["--shards", str(shards), "--split", "train", "--heldout-split", "val",
                       "--backbone", "tf_efficientnet_lite0", "--image-size", "32", "48x64", "--level", "8",
                       "--attribute", "meta.objects[].color", "meta.objects[].shape", "--out", str(tmp_path / "out"),
                       "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| input | stride (grid) | meta.objects[].color | meta.objects[].shape |" in out
    assert "| 48x64 | 8 (6x8) |" in out and "Recommendation" in out
    saved = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert len(saved["results"]) == 2 * 1 * 2 and saved["shards"] == str(shards / "train")
    val_objects = sum(len(generate_scene(0, "val", i, CONFIG).objects) for i in range(SCENES // 10))
    assert {r["score"]["heldout_objects"] for r in saved["results"]} == {val_objects}
    assert "| 32x32 | 8 (4x4) |" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("argv,message", [
    (["--image-size", "0"], "--image-size '0': use N (a square) or HxW"),
    (["--attribute", "colour"], "--attribute 'colour': use text, answer, label"),
    (["--attribute", "meta.nothing"], "--attribute 'meta.nothing' found no object with a box in the training samples"),
    (["--level", "7"], "--level 7: backbone 'tf_efficientnet_lite0' has levels at strides [2, 4, 8, 16, 32]"),
    (["--split", "nope"], "no split 'nope' in it"),
    (["--backbone", "efficientnet_lite_zero"], "unknown backbone 'efficientnet_lite_zero'"),
    (["--max-samples", "0"], "--max-samples and --batch-size must be >= 1"),
    (["--pool", "max"], "argument --pool: invalid choice"),
])
def test_a_bad_argument_is_one_error_line(shards, argv, message, capsys):
    base = {"--shards": str(shards), "--split": "train", "--backbone": "tf_efficientnet_lite0",
            "--attribute": "meta.objects[].color", "--level": "8", "--image-size": "64"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    with pytest.raises(SystemExit) as exit_:
        run_cli(probe_main, [word for pair in base.items() for word in pair] + ["--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert message in err.strip().splitlines()[-1], err
