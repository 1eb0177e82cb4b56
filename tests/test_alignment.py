"""Alignment scores (vlcoattn.eval.alignment): a token's attention and prior against its target box."""

from __future__ import annotations

import math

import pytest
import torch

from vlcoattn.eval.alignment import cell_box_overlap, inside, map_scores, token_alignment
from vlcoattn.models import VLCoAttnModel

from helpers import batch, tiny_config


def test_cell_overlap_is_each_cell_s_share_of_the_box():
    # 4 x 4 grid, cells of side 0.25: a box covering cell (0, 0) and half of cell (0, 1)
    overlap = cell_box_overlap(torch.tensor([[0.1875, 0.125, 0.375, 0.25]]), (4, 4))
    expected = torch.zeros(1, 16)
    expected[0, 0], expected[0, 1] = 1.0, 0.5
    torch.testing.assert_close(overlap, expected)
    # summed over cells (times a cell's area) it is the box's area, on a non-square grid too
    boxes = torch.tensor([[0.4, 0.6, 0.33, 0.2], [0.5, 0.5, 1.0, 1.0]])
    torch.testing.assert_close(cell_box_overlap(boxes, (5, 7)).sum(-1) / 35, boxes[:, 2] * boxes[:, 3])


def test_map_scores_of_a_peaked_and_a_uniform_map():
    box = torch.tensor([[0.25, 0.25, 0.3, 0.3]])  # x, y in [0.1, 0.4]
    peaked = torch.zeros(1, 64)
    peaked[0, 2 * 8 + 2] = 1.0  # cell (2, 2): center (0.3125, 0.3125), inside the box
    s = map_scores(peaked, box, (8, 8))
    torch.testing.assert_close(s["mass"], torch.ones(1))
    torch.testing.assert_close(s["centroid"], torch.tensor([[0.3125, 0.3125]]))
    torch.testing.assert_close(s["spread"], torch.zeros(1))
    assert inside(s["centroid"], box).item() == 1.0
    uniform = map_scores(torch.full((1, 64), 1 / 64), box, (8, 8))
    torch.testing.assert_close(uniform["mass"], torch.tensor([0.09]))  # the box's share of the image
    assert inside(uniform["centroid"], box).item() == 0.0  # the image center (0.5, 0.5) is outside
    # RMS distance of the 8 x 8 cell centers from the middle: sqrt(2 * (n^2 - 1) / (12 n^2))
    torch.testing.assert_close(uniform["spread"], torch.tensor([math.sqrt(2 * 63 / (12 * 64))]))


def test_token_alignment_scores_the_models_own_maps_per_layer():
    torch.manual_seed(0)
    ids, px = batch(B=3, H=64, W=64)
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.2, 0.3, 0.2], [0.5, 0.5, 0.6, 0.6]])
    model = VLCoAttnModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="output_attentions=True"):
        token_alignment(model(ids, px), boxes)
    out = model(ids, px, output_attentions=True)
    scores = token_alignment(out, boxes, token=1)
    assert set(scores) == {"chance"} | {f"{k}_{m}/{layer}" for k in ("attention", "prior")
                                         for m in ("mass", "inside", "spread") for layer in (1, 2)}
    overlap = cell_box_overlap(boxes, out.grid_sizes[0])
    attention = out.cross_attentions[1][0][:, :, 1].mean(1)  # layer 2, the only level, token 1, head mean
    torch.testing.assert_close(scores["attention_mass/2"], (attention * overlap).sum(-1))
    prior = out.log_priors[0][0][:, :, 1].softmax(-1).mean(1)
    torch.testing.assert_close(scores["prior_mass/1"], (prior * overlap).sum(-1))
    torch.testing.assert_close(scores["chance"], boxes[:, 2] * boxes[:, 3])
    # plain co-attention: the attention only
    plain = VLCoAttnModel(tiny_config(coattention_config=dict(spatial_prior="none"))).eval()
    assert not any(k.startswith("prior") for k in token_alignment(plain(ids, px, output_attentions=True), boxes))


def test_token_alignment_mixes_feature_levels_by_the_token_s_scale_weights():
    torch.manual_seed(0)
    ids, px = batch(B=2, H=64, W=64)
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.5, 0.4]])
    out = VLCoAttnModel(tiny_config(vision_config=dict(out_indices=[1, 2]))).eval()(ids, px, output_attentions=True)
    alpha = out.level_weights[0][:, 0]  # layer 1, token 0: (B, L)
    per_level = [map_scores(a[:, :, 0].mean(1), boxes, g) for a, g in zip(out.cross_attentions[0], out.grid_sizes)]
    scores = token_alignment(out, boxes)
    torch.testing.assert_close(scores["attention_mass/1"], sum(alpha[:, i] * s["mass"] for i, s in enumerate(per_level)))
    centroid = sum(alpha[:, i, None] * s["centroid"] for i, s in enumerate(per_level))
    torch.testing.assert_close(scores["attention_inside/1"], inside(centroid, boxes))
