"""Keys-only levels (``coattention_config.keys_only_levels``): image levels the fusion reads but never updates."""

from __future__ import annotations

import pytest
import torch

from vlcoattn.models import VLCoAttnForMultitask, VLCoAttnModel

from helpers import batch, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread on the shared cores

FINE, COARSE = 0, 1  # test_resnet's out_indices [1, 2]: strides 4 and 8, finest first
HEADS = dict(answer_vocab=["a", "b", "c"], answer_pooling="cls+gated")


def _config(num_layers: int = 2, **coattention):
    return tiny_config(vision_config=dict(out_indices=[1, 2]), heads_config=HEADS,
                       coattention_config=dict(num_layers=num_layers, two_way=True, **coattention))


def _model(cls=VLCoAttnModel, seed: int = 0, **coattention):
    torch.manual_seed(seed)
    return cls(_config(**coattention)).eval()


def _targets(B: int = 2):
    g = torch.Generator().manual_seed(0)
    return dict(labels=torch.rand(B, 3, generator=g), boxes=torch.rand(B, 4, generator=g) * 0.5 + 0.25)


def test_a_keys_only_level_leaves_the_stack_as_the_input_projection_made_it():
    """Its cells pass through every layer unchanged; the coarse level is updated, and (image -> text attention
    and FFN act on each cell alone) after the one updating layer exactly as the fully updated model updates it."""
    keys_only = _model(num_layers=2, keys_only_levels=[FINE])
    full = _model(num_layers=2)
    full.load_state_dict(keys_only.state_dict())
    ids, pixels = batch()
    with torch.no_grad():
        tokens, _, _ = keys_only.image_tokens(pixels)
        out, ref = keys_only(ids, pixels), full(ids, pixels)
    assert torch.equal(out.image_hidden_states[FINE], tokens[FINE])
    assert not torch.allclose(out.image_hidden_states[COARSE], tokens[COARSE], atol=1e-3)
    torch.testing.assert_close(out.image_hidden_states[COARSE], ref.image_hidden_states[COARSE])
    assert not torch.allclose(ref.image_hidden_states[FINE], tokens[FINE], atol=1e-3)
    assert not torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-4)  # the text reads its keys


def test_the_keys_only_level_stays_a_key_of_every_layer_and_a_query_of_none():
    """It keeps its text -> image maps and Gaussians at every layer; the image -> text maps cover the coarse
    cells alone."""
    model = _model(num_layers=3, keys_only_levels=[-2])
    ids, pixels = batch()
    with torch.no_grad():
        out = model(ids, pixels, output_attentions=True)
    (h0, w0), (h1, w1) = out.grid_sizes
    assert [[m.shape[-1] for m in layer] for layer in out.cross_attentions] == [[h0 * w0, h1 * w1]] * 3
    assert [lw.shape[-1] for lw in out.level_weights] == [2] * 3
    assert [a.shape[2] for a in out.image_attentions] == [h1 * w1] * 2  # the layers but the last
    assert model.config.coattention_config.keys_only_levels == [FINE]  # stored from 0


def test_unset_keeps_todays_model_and_an_empty_list_is_the_same():
    """The same seed builds the same weights; no level keys-only computes what the default does."""
    default, empty = _model(VLCoAttnForMultitask), _model(VLCoAttnForMultitask, keys_only_levels=[])
    assert default.state_dict().keys() == empty.state_dict().keys()
    assert all(torch.equal(v, empty.state_dict()[k]) for k, v in default.state_dict().items())
    ids, pixels = batch()
    targets = _targets()
    a, b = default(ids, pixels, **targets), empty(ids, pixels, **targets)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred_boxes, b.pred_boxes)


def _image_block_parameters(d: int, ffn: int) -> int:
    """One layer's image-stream blocks by hand: image -> text attention (q, k, v, out: d x d + bias), its
    LayerNorm (2d), the FFN (d -> ffn -> d with biases) and the FFN's LayerNorm (2d)."""
    return 4 * (d * d + d) + 2 * d + (d * ffn + ffn) + (ffn * d + d) + 2 * d


def test_the_parameters_drop_only_when_no_level_is_left_to_update():
    """The image blocks are shared by the levels: one keys-only level of two keeps them all; every level
    keys-only removes them from every layer but the last (which has none)."""
    def count(model):
        return sum(p.numel() for p in model.parameters())

    n = 3
    full, one, every = (_model(num_layers=n, keys_only_levels=k) for k in (None, [FINE], [FINE, COARSE]))
    fusion = full.config.coattention_config
    assert count(one) == count(full)
    assert count(full) - count(every) == (n - 1) * _image_block_parameters(fusion.hidden_size, fusion.intermediate_size)
    assert all(layer.image_attn is None and layer.image_ffn is None for layer in every.fusion.layers)
    ids, pixels = batch()
    with torch.no_grad():
        tokens, _, _ = every.image_tokens(pixels)
        out = every(ids, pixels, output_attentions=True)
    assert all(torch.equal(v, t) for v, t in zip(out.image_hidden_states, tokens)) and out.image_attentions is None


@pytest.mark.parametrize("keys_only", [[FINE], [FINE, COARSE]])
def test_gradients_reach_every_parameter_in_use(keys_only):
    """VQA + boxes with the gated image pooling (which reads every level's cells): every trainable parameter
    gets a gradient, the keys-only level's input projection and level embedding a non-zero one."""
    model = _model(VLCoAttnForMultitask, keys_only_levels=keys_only).train()
    ids, pixels = batch()
    model(ids, pixels, **_targets()).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    base = model.vlcoattn
    assert all(p.grad.abs().sum() > 0 for p in base.input_proj[FINE].parameters())
    assert base.level_embed.weight.grad[FINE].abs().sum() > 0


def test_it_trains_with_the_prior_and_attention_supervision_on_several_levels():
    model = _model(VLCoAttnForMultitask, keys_only_levels=[FINE], prior_supervision_weight=1.0,
                   attention_supervision_weight=1.0).train()
    ids, pixels = batch(B=2, T=6)
    tokens = torch.zeros(2, 1, 6, dtype=torch.bool)
    tokens[0, 0, 1:3] = tokens[1, 0, 2:5] = True
    boxes = torch.tensor([[[0.3, 0.4, 0.2, 0.3]], [[0.6, 0.55, 0.4, 0.5]]])
    out = model(ids, pixels, phrase_tokens=tokens, phrase_boxes=boxes, **_targets())
    parts = (out.loss_prior_center, out.loss_prior_scale, out.loss_attention_mass)
    assert all(torch.isfinite(p) and p > 0 for p in parts)
    out.loss.backward()
    assert model.vlcoattn.input_proj[FINE][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("value", [[2], [-3], [0.5], [True]])
def test_bad_positions_are_one_clear_error(value):
    with pytest.raises(ValueError, match="keys_only_levels"):
        _config(keys_only_levels=value)


def test_duplicates_and_negative_positions_are_stored_once_from_zero():
    assert _config(keys_only_levels=[1, -1, -2]).coattention_config.keys_only_levels == [FINE, COARSE]


def test_save_and_load_keep_the_keys_only_levels(tmp_path):
    model = _model(VLCoAttnForMultitask, keys_only_levels=[-2])
    model.save_pretrained(tmp_path)
    loaded = VLCoAttnForMultitask.from_pretrained(tmp_path).eval()
    assert loaded.config.coattention_config.keys_only_levels == [FINE]
    assert [layer.updated_levels for layer in loaded.vlcoattn.fusion.layers] == [[COARSE], []]
    ids, pixels = batch()
    with torch.no_grad():
        a, b = model(ids, pixels), loaded(ids, pixels)
    torch.testing.assert_close(b.pred_boxes, a.pred_boxes, rtol=0, atol=0)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=0)
