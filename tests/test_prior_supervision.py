"""Supervision of the priors (and of plain co-attention's attention) by the boxes of the phrases' objects."""

from __future__ import annotations

import math

import pytest
import test_trainer
import torch
from numpy.testing import assert_allclose
from test_trainer import NO_DROPOUT, assert_same_weights, base_config, job_of, read_metrics, train, weights

from vlcoattn.data.read.pipeline import Collator
from vlcoattn.fusion import attention_mass_loss, prior_supervision_loss, supervised_pairs
from vlcoattn.models import VLCoAttnForGrounding, VLCoAttnForMultitask, VLCoAttnForQuestionAnswering
from vlcoattn.tasks import get_task

from helpers import batch, processor_for, tiny_config

assets = test_trainer.assets  # the trainer tests' tiny CooBERT + CLEVR-lite (a module fixture)

BETA = 8.0


def _targets():
    """Two rows of T=6 tokens: row 0 has a boxed phrase (tokens 1-2) and one without a box (token 3); row 1
    one boxed phrase (tokens 2-4) and a padding phrase."""
    tokens = torch.zeros(2, 2, 6, dtype=torch.bool)
    tokens[0, 0, 1:3] = tokens[0, 1, 3] = tokens[1, 0, 2:5] = True
    boxes = torch.tensor([[[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.1]], [[0.6, 0.55, 0.4, 0.5], [0.5, 0.5, 0.1, 0.1]]])
    mask = torch.tensor([[True, False], [True, False]])
    return tokens, boxes, mask


def _model(cls=VLCoAttnForGrounding, seed=0, **coattention):
    torch.manual_seed(seed)
    return cls(tiny_config(coattention_config=coattention, heads_config=dict(answer_vocab=["a", "b", "c"])))


# ----------------------------------------------------------------------------- the losses by hand


def test_a_prior_on_its_box_costs_nothing_and_moving_it_costs_the_distance():
    box = torch.tensor([[[0.3, 0.6, 0.24, 0.12]]])  # (B=1, P=1, 4)
    pairs = torch.tensor([[[True, False]]])  # token 0 names the phrase, token 1 not
    W, H, m = 12, 8, 0.5
    sigma = box[0, 0, 2:] / math.sqrt(12)  # target std (x, y), normalized
    s = math.sqrt(BETA / 2) / (sigma * torch.tensor([m * W, m * H]))  # precision of that std, in cells
    centers = torch.rand(1, 2, 3, 2)
    centers[0, 0] = box[0, 0, :2]  # all 3 heads of token 0 on the box center
    scales = torch.rand(1, 2, 3, 2) + 0.5
    scales[0, 0] = s
    c, w = prior_supervision_loss([centers], [scales], box, pairs, (m * W, m * H), BETA)
    assert float(c) == pytest.approx(0.0, abs=1e-6) and float(w) == pytest.approx(0.0, abs=1e-5)
    moved = centers.clone()
    moved[0, 0, 1, 0] += 0.1  # head 1 moves 0.1 right: the mean over heads is 0.1 / 3
    scales2 = scales.clone()
    scales2[0, 0, :, 1] *= 2  # y precision doubled: the std halves, |log 1/2| on every head
    c, w = prior_supervision_loss([centers, moved], [scales, scales2], box, pairs, (m * W, m * H), BETA)
    assert float(c) == pytest.approx(0.1 / 3, abs=1e-6) and float(w) == pytest.approx(math.log(2), abs=1e-5)
    c4, _ = prior_supervision_loss([centers, moved], [scales, scales2], box, pairs, (m * W, m * H), BETA, num_items=4)
    assert float(c4) == pytest.approx(0.1 / 3 / 4, abs=1e-6)  # divided by the step's pairs, not this batch's


def test_the_prior_loss_matches_a_loop_over_pairs_layers_and_heads():
    torch.manual_seed(1)
    tokens, boxes, mask = _targets()
    centers = [torch.rand(2, 6, 4, 2) for _ in range(2)]
    scales = [torch.randn(2, 6, 4, 2) for _ in range(2)]
    cells = (6.0, 4.0)
    c, w = prior_supervision_loss(centers, scales, boxes, supervised_pairs(tokens, mask), cells, BETA)
    want_c = want_w = 0.0
    n = 0
    for b, p, t in zip(*supervised_pairs(tokens, mask).nonzero(as_tuple=True)):
        n += 1
        for layer in range(2):
            for k in range(4):
                for a in range(2):
                    want_c += abs(float(centers[layer][b, t, k, a]) - float(boxes[b, p, a])) / 4
                    std = math.sqrt(BETA / 2) / (abs(float(scales[layer][b, t, k, a])) * cells[a])
                    want_w += abs(math.log(std) - math.log(float(boxes[b, p, 2 + a]) / math.sqrt(12))) / 4
    assert n == 5
    assert float(c) == pytest.approx(want_c / n, rel=1e-5) and float(w) == pytest.approx(want_w / n, rel=1e-5)


def _mass_by_hand(maps, grid, boxes, pairs) -> float:
    """-log(share of attention on the cells a box touches + ε), mean over heads, summed over layers,
    mean over pairs; one level."""
    H, W = grid
    total, n = 0.0, 0
    for b, p, t in zip(*pairs.nonzero(as_tuple=True)):
        n += 1
        cx, cy, w, h = boxes[b, p].tolist()
        cells = [i * W + j for i in range(H) for j in range(W)
                 if j / W < cx + w / 2 and (j + 1) / W > cx - w / 2 and i / H < cy + h / 2 and (i + 1) / H > cy - h / 2]
        for layer in maps:
            p_ = layer[0][b, :, t]  # (N_h, S)
            total += sum(-math.log(float(p_[k, cells].sum()) + 1e-6) for k in range(p_.shape[0])) / p_.shape[0]
    return total / n


@pytest.mark.parametrize("prior", ["none", "gaussian"])
def test_the_attention_signal_is_minus_log_the_mass_on_the_box_of_the_returned_maps(prior):
    model = _model(spatial_prior=prior, attention_supervision_weight=0.5).eval()
    ids, pixels = batch(B=2, T=6)
    tokens, boxes, mask = _targets()
    with torch.no_grad():
        seen = model(ids, pixels, phrase_tokens=tokens, phrase_boxes=boxes, phrase_mask=mask, output_attentions=True)
        quiet = model(ids, pixels, phrase_tokens=tokens, phrase_boxes=boxes, phrase_mask=mask)
    grid = tuple(seen.cross_attentions[0][0].shape[-1:])  # S; the grid from the base model
    base = model.vlcoattn(ids, pixels)
    want = _mass_by_hand(seen.cross_attentions, base.grid_sizes[0], boxes, supervised_pairs(tokens, mask))
    assert grid == (base.grid_sizes[0][0] * base.grid_sizes[0][1],)
    assert float(seen.loss_attention_mass) == pytest.approx(want, rel=1e-5)
    assert float(quiet.loss_attention_mass) == pytest.approx(want, rel=1e-5)  # maps computed, not returned
    assert quiet.cross_attentions is None and float(quiet.loss) == pytest.approx(0.5 * want, rel=1e-5)
    assert seen.loss_prior_center is None  # the prior's loss is off


def test_the_mass_of_several_levels_is_mixed_by_the_scale_selection():
    maps = [[torch.full((1, 1, 1, 4), 0.25), torch.tensor([[[[1.0, 0.0]]]])]]  # level 0: 2x2 uniform, level 1: 1x2
    box = torch.tensor([[[0.25, 0.5, 0.2, 0.9]]])  # the left column of each grid
    alpha = [torch.tensor([[[0.3, 0.7]]])]
    loss = attention_mass_loss(maps, [(2, 2), (1, 2)], box, torch.ones(1, 1, 1, dtype=torch.bool), alpha)
    assert float(loss) == pytest.approx(-math.log(0.3 * 0.5 + 0.7 * 1.0 + 1e-6), rel=1e-6)


# ----------------------------------------------------------------------------- the model


def test_the_prior_loss_reaches_the_prior_predictors_and_not_the_backbone():
    model = _model(num_layers=1, prior_supervision_weight=1.0)
    ids, pixels = batch(B=2, T=6)
    tokens, boxes, mask = _targets()
    out = model(ids, pixels, phrase_tokens=tokens, phrase_boxes=boxes, phrase_mask=mask)  # no head targets
    want = out.loss_prior_center + out.loss_prior_scale
    assert float(out.loss.detach()) == pytest.approx(float(want.detach())) and out.loss_l1 is None
    out.loss.backward()
    layer = model.vlcoattn.fusion.layers[0]
    for module in (layer.reference_head, layer.cross_attn.prior.offsets, layer.cross_attn.prior.scales):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None or not p.grad.any() for p in model.vlcoattn.backbone.parameters())
    assert all(p.grad is None or not p.grad.any() for p in model.box_head.parameters())


def test_supervision_layers_read_only_the_named_layers_priors_and_maps():
    ids, pixels = batch(B=2, T=6)
    tokens, boxes, mask = _targets()
    pairs = supervised_pairs(tokens, mask)
    weights = dict(num_layers=3, prior_supervision_weight=1.0, attention_supervision_weight=1.0)
    every, later = _model(**weights).eval(), _model(**weights, supervision_layers=[1, -1]).eval()
    assert later.config.coattention_config.supervision_layers == [1, 2]
    with torch.no_grad():
        full = every(ids, pixels, phrase_tokens=tokens, phrase_boxes=boxes, phrase_mask=mask, output_attentions=True)
        part = later(ids, pixels, phrase_tokens=tokens, phrase_boxes=boxes, phrase_mask=mask, output_attentions=True)
        base = every.vlcoattn(ids, pixels, output_attentions=True)
    H, W = base.grid_sizes[-1]
    m = every.vlcoattn.level_scale_multipliers[-1]
    center, scale = prior_supervision_loss(base.centers[1:], base.scales[1:], boxes, pairs, (m * W, m * H), BETA)
    assert float(part.loss_prior_center) == pytest.approx(float(center), rel=1e-5)
    assert float(part.loss_prior_scale) == pytest.approx(float(scale), rel=1e-5)
    assert float(part.loss_prior_center) < float(full.loss_prior_center)  # layer 0's term is left out
    want = _mass_by_hand(full.cross_attentions[1:], base.grid_sizes[0], boxes, pairs)
    assert float(part.loss_attention_mass) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match=r"supervision_layers must be fusion layer indices in -3 \.\. 2"):
        tiny_config(coattention_config=dict(num_layers=3, supervision_layers=[3]))
    with pytest.raises(ValueError, match="supervision_layers"):
        tiny_config(coattention_config=dict(supervision_layers=[]))


def test_the_grounding_token_is_supervised_by_its_rows_target_box_when_asked():
    ids, pixels = batch(B=2, T=6)
    tokens, boxes, mask = _targets()
    target = torch.tensor([[0.4, 0.5, 0.3, 0.2], [0.6, 0.4, 0.2, 0.5]])
    box_mask = torch.tensor([True, False])  # row 1 is a VQA row: its [CLS] has no box
    attention = torch.ones(2, 6, dtype=torch.long)
    attention[0, :2] = 0  # row 0 left-padded: its [CLS] is token 2
    model = _model(VLCoAttnForMultitask, prior_supervision_weight=1.0, supervise_grounding_token=True).eval()
    counts = {"vqa": 1, "ground": 1, "supervised_tokens": 5}
    with torch.no_grad():
        out = model(ids, pixels, attention_mask=attention, boxes=target, box_mask=box_mask, labels=torch.tensor([-100, 1]),
                    answer_mask=~box_mask, phrase_tokens=tokens, phrase_boxes=boxes, phrase_mask=mask,
                    num_items_in_batch=counts)
        base = model.vlcoattn(ids, pixels, attention)
    cls_token = torch.zeros(2, 1, 6, dtype=torch.bool)
    cls_token[0, 0, 2] = True
    pairs = supervised_pairs(torch.cat([tokens, cls_token], 1), torch.cat([mask, box_mask[:, None]], 1))
    H, W = base.grid_sizes[-1]
    m = model.vlcoattn.level_scale_multipliers[-1]
    center, scale = prior_supervision_loss(base.centers, base.scales, torch.cat([boxes, target[:, None]], 1), pairs,
                                           (m * W, m * H), BETA, num_items=6)
    assert int(pairs.sum()) == 6
    assert float(out.loss_prior_center) == pytest.approx(float(center), rel=1e-5)
    assert float(out.loss_prior_scale) == pytest.approx(float(scale), rel=1e-5)


@pytest.mark.parametrize("cls", [VLCoAttnForGrounding, VLCoAttnForMultitask])
def test_zero_weights_give_the_loss_and_gradients_of_the_model_without_supervision(cls):
    ids, pixels = batch(B=2, T=6)
    tokens, boxes, mask = _targets()
    targets = dict(boxes=torch.tensor([[0.4, 0.5, 0.3, 0.2], [0.6, 0.4, 0.2, 0.5]]))
    if cls is VLCoAttnForMultitask:
        targets.update(labels=torch.tensor([0, 2]), box_mask=torch.tensor([True, False]))
    plain = _model(cls)
    off = _model(cls, prior_supervision_weight=0, attention_supervision_weight=0.0)
    a = plain(ids, pixels, **targets, num_items_in_batch={"vqa": 2, "ground": 1})
    b = off(ids, pixels, phrase_tokens=tokens, phrase_boxes=boxes, phrase_mask=mask, **targets,
            num_items_in_batch={"vqa": 2, "ground": 1, "supervised_tokens": 5})
    a.loss.backward()
    b.loss.backward()
    assert torch.equal(a.loss, b.loss) and b.loss_prior_center is None and b.loss_attention_mass is None
    for (name, p), q in zip(plain.named_parameters(), off.parameters()):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), name


def test_bad_weights_are_one_clear_error():
    with pytest.raises(ValueError, match="prior_supervision_weight must be >= 0"):
        tiny_config(coattention_config=dict(prior_supervision_weight=-1.0))
    with pytest.raises(ValueError, match="attention_supervision_weight must be >= 0"):
        tiny_config(coattention_config=dict(attention_supervision_weight=float("nan")))
    with pytest.raises(ValueError, match="spatial_prior='gaussian'"):
        tiny_config(coattention_config=dict(spatial_prior="none", prior_supervision_weight=1.0))


def test_micro_batches_summed_over_the_steps_pairs_give_the_whole_batchs_loss_and_gradients():
    ids, pixels = batch(B=2, T=6)
    tokens, boxes, mask = _targets()
    weights = dict(prior_supervision_weight=0.7, attention_supervision_weight=0.3)
    whole, parts = _model(**weights).eval(), _model(**weights).eval()  # eval: no batch statistics in the backbone
    n = int(supervised_pairs(tokens, mask).sum())
    whole(ids, pixels, phrase_tokens=tokens, phrase_boxes=boxes, phrase_mask=mask,
          num_items_in_batch={"supervised_tokens": n}).loss.backward()
    total = 0.0
    for r in (slice(0, 1), slice(1, 2)):
        out = parts(ids[r], pixels[r], phrase_tokens=tokens[r], phrase_boxes=boxes[r], phrase_mask=mask[r],
                    num_items_in_batch={"supervised_tokens": n})
        out.loss.backward()
        total += float(out.loss.detach())
    one = whole(ids, pixels, phrase_tokens=tokens, phrase_boxes=boxes, phrase_mask=mask)
    assert total == pytest.approx(float(one.loss.detach()), rel=1e-5)  # the batch mean = the sum of the parts over n
    for (name, p), q in zip(whole.named_parameters(), parts.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------- data


def _decoded(task, text, phrases=None, key="k"):
    sample = {"key": key, "task": task, "text": text, "meta": {}, "pixels": torch.zeros(3, 8, 8, dtype=torch.uint8),
              "letterbox": torch.ones(8), "answers": ["yes"], "box": torch.tensor([0.5, 0.5, 0.2, 0.2])}
    if phrases is not None:
        sample["phrases"] = phrases
    return sample


def test_phrase_rows_of_vqa_and_ground_samples_are_supervised_and_rows_without_phrases_are_not(minilm_tokenizer):
    processor = processor_for(minilm_tokenizer, 8)
    box = torch.tensor([[0.3, 0.4, 0.2, 0.2]])
    question = "is the red square left of a circle?"
    at, circle = question.index("red square"), question.index("a circle")
    samples = [
        _decoded("vqa", question, [{"span": (at, at + 10), "boxes": box},
                                   {"span": (circle, circle + 8), "boxes": torch.zeros(0, 4)}]),
        _decoded("ground", "the blue circle", [{"span": (0, 15), "boxes": box}], "k1"),
        _decoded("vqa", "how many things are there?", None, "k2"),
    ]
    off = Collator(processor.tokenizer, processor.image_processor, ["yes"])(samples)
    assert "phrase_tokens" not in off and get_task("vqa+ground").items(off) == {"vqa": 2, "ground": 1}
    on = Collator(processor.tokenizer, processor.image_processor, ["yes"], phrase_spans=True)(samples)
    assert on["phrase_mask"].tolist() == [[True, False], [True, False], [False, False]]  # the boxless one: no
    assert on["phrase_tokens"][0, 0].sum() == 2 and on["phrase_tokens"][1, 0].sum() == 3  # red square / the blue circle
    spec = get_task("vqa+ground")
    assert spec.items(on) == {"vqa": 2, "ground": 1, "supervised_tokens": 5}
    inputs = spec.model_inputs(on, "cpu")
    torch.testing.assert_close(inputs["phrase_boxes"][1, 0], box[0])
    assert torch.equal(inputs["phrase_mask"], on["phrase_mask"])
    assert spec.num_items_argument(spec.items(on))["supervised_tokens"] == 5
    assert get_task("vqa").num_items_argument(get_task("vqa").items(off)) == 2  # one number, as before


def test_a_model_with_supervision_asks_its_loader_for_phrase_spans():
    assert not _model(VLCoAttnForQuestionAnswering).reads_phrase_spans
    assert _model(VLCoAttnForQuestionAnswering, spatial_prior="none", attention_supervision_weight=1.0).reads_phrase_spans


# ----------------------------------------------------------------------------- training


def test_accumulated_micro_batches_train_as_the_doubled_batch_with_the_supervision_logged(assets, tmp_path):
    """As the trainer test of the other losses: accum_steps=2 at batch 4 == batch 8, the supervision's parts
    too (averaged over the step's supervised tokens); CLEVR-lite's VQA and grounding rows carry phrases."""
    config = {**NO_DROPOUT, "coattention_config": {**NO_DROPOUT["coattention_config"], "prior_supervision_weight": 0.5,
                                                   "attention_supervision_weight": 0.5}}
    fixed = {"data.shuffle": False, "data.val": [], "train.steps": 3, "model.config": config}
    train(job_of(base_config(assets, tmp_path / "big", **fixed, **{"data.batch_size": 8}), tmp_path))
    train(job_of(base_config(assets, tmp_path / "accum", **fixed, **{"data.batch_size": 4, "optim.accum_steps": 2}),
                 tmp_path))
    parts = ("loss", "loss_vqa", "loss_l1", "loss_prior_center", "loss_prior_scale", "loss_attention_mass")
    logs = {name: [[m[k] for k in parts] for m in read_metrics(tmp_path / name / "metrics.jsonl") if m["split"] == "train"]
            for name in ("big", "accum")}
    assert len(logs["accum"]) == 3 and all(v > 0 for row in logs["accum"] for v in row)
    assert_allclose(logs["accum"], logs["big"], rtol=1e-5)
    assert_same_weights(weights(tmp_path / "big"), weights(tmp_path / "accum"), atol=2e-5)
