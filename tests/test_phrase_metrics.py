"""Phrase grounding Recall@1 (Any-Box, Merged-Box, per type) and its baselines, on hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlcoattn.data.schema import phrase_types
from vlcoattn.data.write.converters.flickr30k import read_image
from vlcoattn.eval.phrase_grounding import (
    PhraseRecall,
    center_box,
    mean_phrase_box_size,
    merge_boxes,
    phrase_hits,
    whole_image_box,
)

PAIR = [[0, 0, 10, 10], [20, 0, 30, 10]]  # two people of one phrase, 10 px apart


def test_merged_box_encloses_every_box():
    assert merge_boxes(torch.tensor([*PAIR, [5, -4, 8, 3]])).tolist() == [0, -4, 30, 10]
    with pytest.raises(ValueError, match="merge_boxes needs"):
        merge_boxes(torch.zeros(0, 4))


@pytest.mark.parametrize("pred, boxes, hits", [
    ([0, 0, 10, 10], [[0, 0, 10, 20]], {"any": True, "merged": True}),  # IoU 100/200 = 0.5: a hit
    ([0, 0, 10, 10], [[0, 0, 10, 21]], {"any": False, "merged": False}),  # 100/210 < 0.5
    ([0, 0, 10, 10], PAIR, {"any": True, "merged": False}),  # one of them; merged: 100/300
    ([0, 0, 30, 10], PAIR, {"any": False, "merged": True}),  # 100/300 each; the group: 1.0
    ([2, 0, 28, 10], PAIR, {"any": False, "merged": True}),  # merged 260/300
])
def test_any_box_and_merged_box_hits(pred, boxes, hits):
    assert phrase_hits(torch.tensor(pred), torch.tensor(boxes)) == hits


def test_recall_overall_and_per_type_skips_phrases_without_box():
    recall = PhraseRecall()
    assert recall.compute() == {}
    assert recall.add(torch.tensor([0, 0, 10, 10]), PAIR, ["people"]) == {"any": True, "merged": False}
    recall.add(torch.tensor([0, 0, 30, 10]), PAIR, phrase_types({"type": "bodyparts/people"}))
    recall.add(torch.tensor([50, 50, 60, 60]), [[0, 0, 10, 10]], ["clothing"])
    assert recall.add(torch.tensor([0, 0, 10, 10]), [], ["notvisual"]) is None
    assert recall.add(torch.tensor([0, 0, 10, 10]), [[0, 0, 10, 10]]) == {"any": True, "merged": True}  # no type
    out = recall.all_reduce().compute()
    assert out == {
        "recall@1_any": 2 / 4, "recall@1_merged": 2 / 4,
        "recall@1_any/bodyparts": 0.0, "recall@1_any/clothing": 0.0, "recall@1_any/people": 1 / 2,
        "recall@1_merged/bodyparts": 1.0, "recall@1_merged/clothing": 0.0, "recall@1_merged/people": 1 / 2,
        "phrases": 4.0, "phrases_without_box": 1.0}
    with pytest.raises(RuntimeError, match="already called"):
        recall.all_reduce()


def test_trivial_boxes():
    assert whole_image_box(40, 30).tolist() == [0, 0, 40, 30]
    assert center_box(40, 30, (0.5, 0.2)).tolist() == [10, 12, 30, 18]
    size = mean_phrase_box_size([(PAIR, 60, 20), ([[0, 0, 6, 4]], 12, 8), ([], 5, 5)])
    assert size == pytest.approx(((30 / 60 + 6 / 12) / 2, (10 / 20 + 4 / 8) / 2))
    with pytest.raises(ValueError, match="no phrase with a box"):
        mean_phrase_box_size([([], 5, 5)])


def test_the_whole_image_baseline_on_the_flickr30k_fixture():
    """Only entity 5 (the cabin, 335 x 340 of 375 x 500 px: IoU 0.607) is found by the whole image; its
    3 mentions are all of type "other", among 13 phrases with a box (3 have none)."""
    annotation, captions = read_image(Path(__file__).parent / "fixtures" / "flickr30k", "1000268201")
    recall = PhraseRecall()
    guess = whole_image_box(annotation.width, annotation.height)
    for _, phrases in captions:
        for phrase in phrases:
            recall.add(guess, phrase["boxes"], phrase_types(phrase))
    out = recall.compute()
    assert (out["phrases"], out["phrases_without_box"]) == (13, 3)
    assert out["recall@1_any"] == out["recall@1_merged"] == 3 / 13
    assert out["recall@1_any/other"] == 3 / 6 and out["recall@1_any/people"] == 0.0
    assert out["recall@1_any/bodyparts"] == 0.0 and out["recall@1_merged/clothing"] == 0.0
