"""SMCA co-attention: the Gaussian prior, SDPA vs reference, ablations, masking, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vlcoattn.fusion import (
    CoAttentionConfig,
    SMCACrossAttention,
    SMCAFusionEncoder,
    SpatialPriorHead,
    attention_reference,
    fusion_block_config,
    gaussian_log_prior,
    grid_coordinates,
    merge_masks,
    sine_position_encoding_2d,
)

D, NH = 32, 4


def _levels(B, grids, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(B, h * w, d, generator=g) for h, w in grids]
    pos = [sine_position_encoding_2d(h, w, d) for h, w in grids]
    return feats, pos


def _config(**kw) -> CoAttentionConfig:
    """A small co-attention config (no dropout, per-head scales, one-way unless ``kw`` says otherwise)."""
    args = dict(hidden_size=D, num_attention_heads=NH, intermediate_size=64, shared_key_dim=16, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, prior_sharing="per_head", two_way=False)
    return CoAttentionConfig(**{**args, **kw})


def _encoder(num_levels: int = 1, **kw):
    torch.manual_seed(0)
    enc = SMCAFusionEncoder(_config(**kw), [1.0] * num_levels)
    # move scales off their init (s = 1) and centers apart, so the tests see a non-trivial prior
    for layer in enc.layers:
        if layer.cross_attn.prior is not None:
            nn.init.normal_(layer.cross_attn.prior.scales.weight, std=0.3)
            nn.init.normal_(layer.cross_attn.prior.offsets.weight, std=0.3)
    return enc.eval()


# ------------------------------------------------------------------------------------ the prior


@pytest.mark.parametrize("beta", [8.0, 2.5])
def test_log_prior_equals_hand_computed_gaussian(beta):
    H, W = 3, 4
    centers = torch.tensor([[[[0.25, 0.5], [0.9, 0.1]]]])  # (B=1, T=1, N_h=2, 2) normalized (x, y)
    scales = torch.tensor([[[[1.0, 2.0], [0.5, 1.5]]]])
    got = gaussian_log_prior(centers, scales, (H, W), beta)  # (1, 2, 1, 12)
    assert got.shape == (1, 2, 1, H * W)
    for k in range(2):
        cx, cy = centers[0, 0, k, 0].item() * W, centers[0, 0, k, 1].item() * H  # cell units
        sx, sy = scales[0, 0, k].tolist()
        for i in range(H):
            for j in range(W):
                x, y = j + 0.5, i + 0.5  # cell centers
                want = -((x - cx) ** 2 * sx**2 + (y - cy) ** 2 * sy**2) / beta
                assert got[0, k, 0, i * W + j].item() == pytest.approx(want, abs=1e-5)
    # the most likely cell is the one under the center: head 0 at (x=1.0, y=1.5) -> row 1, col 0 or 1
    assert got[0, 0, 0].view(H, W).max(dim=1).values.argmax().item() == 1


def test_prior_head_init_and_sharing():
    torch.manual_seed(0)
    h, ref = torch.randn(2, 5, D), torch.rand(2, 5, 2)
    head = SpatialPriorHead(D, NH, "per_head")
    assert torch.all(head.scales.weight == 0) and torch.all(head.scales.bias == 1)
    c, s = head(h, ref)
    assert c.shape == s.shape == (2, 5, NH, 2)
    assert torch.all(s == 1)  # docs/design.md §3: s = 1 at init
    nn.init.normal_(head.scales.weight)
    _, s = head(h, ref)
    assert not torch.allclose(s[:, :, 0], s[:, :, 1])  # per-head scales differ

    shared = SpatialPriorHead(D, NH, "shared")
    nn.init.normal_(shared.scales.weight)
    c, s = shared(h, ref)
    assert shared.offsets.out_features == 2 and shared.scales.out_features == 2
    assert torch.equal(c[:, :, 0], c[:, :, 3]) and torch.equal(s[:, :, 0], s[:, :, 3])

    ss = SpatialPriorHead(D, NH, "shared_scales")
    nn.init.normal_(ss.scales.weight)
    c, s = ss(h, ref)
    assert ss.offsets.out_features == 2 * NH and ss.scales.out_features == 2
    assert torch.equal(s[:, :, 0], s[:, :, 3]) and not torch.equal(c[:, :, 0], c[:, :, 3])


def test_offsets_act_in_logit_space_so_centers_stay_inside_the_image():
    torch.manual_seed(0)
    h, ref = torch.randn(2, 5, D), torch.rand(2, 5, 2) * 0.8 + 0.1
    head = SpatialPriorHead(D, NH, "per_head")
    nn.init.normal_(head.offsets.weight, std=0.3)  # offsets of order 1 (normalized units)
    delta = (h @ head.offsets.weight.T + head.offsets.bias).view(2, 5, NH, 2)
    assert ((ref[:, :, None] + delta < 0) | (ref[:, :, None] + delta > 1)).any()  # the paper's c_t + Δ_k would leave
    c, _ = head(h, ref)
    torch.testing.assert_close(c, torch.sigmoid(torch.logit(ref)[:, :, None] + delta))
    assert torch.all((c > 0) & (c < 1))


# ------------------------------------------------------------------------- SDPA == reference


def test_sdpa_path_equals_reference_softmax_path():
    torch.manual_seed(0)
    B, T, grids = 2, 6, [(4, 6), (2, 3)]
    attn = SMCACrossAttention(_config(), [0.5, 1.0]).eval()
    nn.init.normal_(attn.prior.scales.weight, std=0.3)
    q = torch.randn(B, T, D)
    feats, pos = _levels(B, grids)
    keys = [f + p for f, p in zip(feats, pos)]
    ref = torch.rand(B, T, 2)
    valid = [torch.ones(B, 24, dtype=torch.bool), torch.ones(B, 6, dtype=torch.bool)]
    valid[0][1, -5:] = False  # some padded image cells in sample 1
    kw = dict(values=feats, grid_sizes=grids, reference_centers=ref, key_valid=valid)
    fused = attn(q, keys, **kw)
    eager = attn(q, keys, **kw, output_attentions=True)
    torch.testing.assert_close(fused.output, eager.output, atol=1e-5, rtol=1e-5)
    p0 = eager.attentions[0]  # (B, N_h, T, 24)
    assert p0.shape == (B, NH, T, 24)
    torch.testing.assert_close(p0.sum(-1), torch.ones(B, NH, T))
    assert torch.all(p0[1, ..., -5:] == 0)  # padded keys get no attention
    torch.testing.assert_close(eager.level_weights.sum(-1), torch.ones(B, T))
    # where each head looked: SDPA with coordinates as values == sum_l alpha_l sum_j p_j (x_j, y_j)
    want = sum(
        eager.level_weights[..., lvl, None, None]
        * (p @ grid_coordinates(g, B, torch.float32, p.device)).transpose(1, 2)
        for lvl, (p, g) in enumerate(zip(eager.attentions, grids))
    )
    torch.testing.assert_close(fused.attended, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager.attended, want, atol=1e-5, rtol=1e-5)


def test_grid_coordinates_are_normalized_cell_centers():
    xy = grid_coordinates((2, 4), 1, torch.float32, torch.device("cpu"))  # (1, 1, 8, 2)
    torch.testing.assert_close(xy[0, 0, 5], torch.tensor([1.5 / 4, 1.5 / 2]))  # row 1, col 1


def test_attended_center_is_the_cell_a_peaked_attention_picks():
    """A prior sharp enough to dominate the logits puts all attention on one cell: m_t = its center."""
    attn = SMCACrossAttention(_config()).eval()
    nn.init.zeros_(attn.q_proj.weight)
    nn.init.zeros_(attn.prior.offsets.weight)
    nn.init.constant_(attn.prior.scales.bias, 20.0)
    H, W = 4, 5
    feats, pos = _levels(1, [(H, W)])
    ref = torch.tensor([[[0.7, 0.4]]])  # x = 3.5 cells -> col 3, y = 1.6 cells -> row 1
    out = attn(torch.randn(1, 1, D), [feats[0] + pos[0]], values=feats, grid_sizes=[(H, W)], reference_centers=ref)
    torch.testing.assert_close(out.attended[0, 0], torch.tensor([[3.5 / W, 1.5 / H]]).expand(NH, 2))


def test_log_prior_as_sdpa_mask_equals_explicit_softmax():
    torch.manual_seed(1)
    B, T, H, W, dh = 2, 5, 4, 4, 8
    q, k, v = torch.randn(B, NH, T, dh), torch.randn(B, NH, H * W, dh), torch.randn(B, NH, H * W, dh)
    log_g = gaussian_log_prior(torch.rand(B, T, NH, 2), torch.rand(B, T, NH, 2) * 2, (H, W))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=log_g)
    # the explicit formula: softmax(q k^T / sqrt(d_h) + log G) v
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(dh) + log_g
    want = torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention_reference(q, k, v, log_g)[0], want, atol=1e-5, rtol=1e-5)


def test_gaussian_prior_alone_peaks_at_the_center():
    """With q = 0 the logits are the log-prior alone: attention = softmax(log G), peaked at c."""
    attn = SMCACrossAttention(_config()).eval()
    nn.init.zeros_(attn.q_proj.weight)
    nn.init.zeros_(attn.q_proj.bias)
    nn.init.zeros_(attn.prior.offsets.weight)
    nn.init.constant_(attn.prior.scales.bias, 3.0)  # sharp: s = 3 per cell
    H, W = 5, 8
    feats, pos = _levels(1, [(H, W)])
    ref = torch.tensor([[[0.8, 0.3]]])  # x = 0.8 * 8 = 6.4 -> col 6; y = 0.3 * 5 = 1.5 -> row 1
    out = attn(torch.randn(1, 1, D), [feats[0] + pos[0]], values=feats, grid_sizes=[(H, W)], reference_centers=ref,
               output_attentions=True)
    probs = out.attentions[0][0, :, 0]  # (N_h, H*W)
    assert torch.all(probs.argmax(-1) == 1 * W + 6)
    torch.testing.assert_close(probs, out.log_priors[0][0, :, 0].softmax(-1))


# -------------------------------------------------------------------- none == plain attention


def test_spatial_prior_none_equals_plain_multihead_cross_attention():
    torch.manual_seed(2)
    B, T, S = 3, 7, 20
    smca = SMCACrossAttention(_config(spatial_prior="none")).eval()
    assert smca.prior is None
    mha = nn.MultiheadAttention(D, NH, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([smca.q_proj.weight, smca.k_proj.weight, smca.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([smca.q_proj.bias, smca.k_proj.bias, smca.v_proj.bias]))
        mha.out_proj.weight.copy_(smca.out_proj.weight)
        mha.out_proj.bias.copy_(smca.out_proj.bias)
    q, kv = torch.randn(B, T, D), torch.randn(B, S, D)
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[0, 15:] = False
    ours = smca(q, [kv], key_valid=[valid])
    theirs, weights = mha(q, kv, kv, key_padding_mask=~valid, average_attn_weights=False)
    torch.testing.assert_close(ours.output, theirs, atol=1e-5, rtol=1e-5)
    eager = smca(q, [kv], key_valid=[valid], output_attentions=True)
    torch.testing.assert_close(eager.attentions[0], weights, atol=1e-5, rtol=1e-5)
    assert ours.centers is None and ours.scales is None


def test_none_ablation_runs_the_same_layer_code():
    enc_g, enc_n = _encoder(spatial_prior="gaussian"), _encoder(spatial_prior="none")
    names_g = {n for n, _ in enc_g.named_parameters()}
    names_n = {n for n, _ in enc_n.named_parameters()}
    assert names_n < names_g  # same modules, minus the prior heads
    assert all(("prior" in n or "reference_head" in n) for n in names_g - names_n)
    feats, pos = _levels(2, [(3, 4)])
    out = enc_n(torch.randn(2, 5, D), feats, pos, [(3, 4)])
    assert out.reference_centers is None and out.centers == ()


# ------------------------------------------------------------------ masking, batching, gradients


@pytest.mark.parametrize("two_way", [False, True])
def test_padded_text_tokens_change_no_output_of_real_tokens(two_way):
    enc = _encoder(two_way=two_way, num_levels=2)
    grids = [(4, 5), (2, 3)]
    feats, pos = _levels(2, grids)
    text = torch.randn(2, 8, D)
    mask = torch.ones(2, 8)
    mask[1, 5:] = 0
    a = enc(text, feats, pos, grids, text_mask=mask)
    text2 = text.clone()
    text2[1, 5:] = 100 * torch.randn(3, D)  # garbage in the padding
    b = enc(text2, feats, pos, grids, text_mask=mask)
    torch.testing.assert_close(a.text_hidden_state[:, :5], b.text_hidden_state[:, :5])
    torch.testing.assert_close(a.text_hidden_state[0], b.text_hidden_state[0])
    for x, y in zip(a.image_hidden_states, b.image_hidden_states):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(a.centers[-1][1, :5], b.centers[-1][1, :5])


@pytest.mark.parametrize("two_way", [False, True])
def test_batch_of_one_equals_same_sample_in_padded_batch(two_way):
    enc = _encoder(two_way=two_way)
    grids = [(4, 6)]
    feats, pos = _levels(2, grids)
    text = torch.randn(2, 9, D)
    mask = torch.ones(2, 9)
    mask[0, 4:] = 0  # sample 0 has 4 real tokens
    batch = enc(text, feats, pos, grids, text_mask=mask)
    alone = enc(text[:1, :4], [f[:1] for f in feats], pos, grids)
    torch.testing.assert_close(batch.text_hidden_state[0, :4], alone.text_hidden_state[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.image_hidden_states[0][0], alone.image_hidden_states[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.reference_centers[0, :4], alone.reference_centers[0], atol=1e-6, rtol=1e-6)


def test_gradients_reach_center_offset_and_scale_parameters():
    enc = _encoder(num_layers=2, num_levels=2).train()
    grids = [(4, 4), (2, 2)]
    feats, pos = _levels(2, grids)
    out = enc(torch.randn(2, 5, D), feats, pos, grids)
    out.text_hidden_state.square().mean().backward()
    ref = enc.layers[0].reference_head
    assert enc.layers[1].reference_head is None  # centers come from the first layer only
    for p in ref.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    for layer in enc.layers:
        prior = layer.cross_attn.prior
        for p in (*prior.offsets.parameters(), *prior.scales.parameters(), *layer.cross_attn.level_select.parameters()):
            assert p.grad is not None and p.grad.abs().sum() > 0


def test_layer_l_centers_where_layer_l_minus_1_looked():
    enc = _encoder(num_layers=3)
    for layer in enc.layers:
        nn.init.zeros_(layer.cross_attn.prior.offsets.weight)
    feats, pos = _levels(1, [(3, 3)])
    out = enc(torch.randn(1, 4, D), feats, pos, [(3, 3)])
    # layer 0 centers on c_t = sigmoid(MLP(h)) of its cross-attention query, in (0, 1)
    assert torch.all((out.reference_centers > 0) & (out.reference_centers < 1))
    torch.testing.assert_close(out.centers[0], out.reference_centers[:, :, None, :].expand(1, 4, NH, 2))
    for prev, c in zip(out.attended[:-1], out.centers[1:]):
        torch.testing.assert_close(c, prev.mean(dim=2, keepdim=True).expand(1, 4, NH, 2), atol=1e-6, rtol=1e-5)
    assert len(out.attended) == 3 and not torch.allclose(out.centers[1], out.centers[0])


# ---------------------------------------------------------------------------------- bad config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=0.0), "beta must be > 0"),
        (dict(beta=-1.0), "beta must be > 0"),
        (dict(spatial_prior="gauss"), "spatial_prior must be one of"),
        (dict(prior_sharing="heads"), "prior_sharing must be one of"),
        (dict(level_scale_multipliers=[1.0, -1.0]), "level_scale_multipliers must be numbers > 0"),
        (dict(hidden_size=30), "multiple of 4"),
        (dict(num_attention_heads=3), "one slice per head"),
        (dict(intermediate_size=0), "intermediate_size must be > 0"),
        (dict(offset_mode="additive"), "unknown option 'offset_mode'"),
    ],
)
def test_bad_coattention_options_raise_one_value_error_in_the_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _config(**kwargs)


def test_the_layers_blocks_are_coobert_blocks_of_the_config_under_the_same_names():
    config = _config(hidden_act="relu", layer_norm_eps=1e-6)
    block = fusion_block_config(config)
    assert (block.hidden_size, block.num_attention_heads, block.intermediate_size, block.shared_key_dim) == (D, NH, 64, 16)
    assert (block.hidden_act, block.layer_norm_eps, block.hidden_dropout_prob) == ("relu", 1e-6, 0.0)
    default = CoAttentionConfig()
    assert (default.prior_sharing, default.two_way, default.spatial_prior, default.beta) == (
        "shared_scales", True, "gaussian", 8.0)
    with pytest.raises(ValueError, match="hidden_size and num_attention_heads"):
        fusion_block_config(default)  # width and heads come from the text (VLCoAttnConfig)


def test_merge_masks_sets_padding_to_dtype_min_without_overflow():
    log_g = torch.full((1, 1, 1, 3), -1e30)
    m = merge_masks(log_g, torch.tensor([[True, False, True]]), torch.float32)
    assert m[0, 0, 0, 1] == torch.finfo(torch.float32).min and torch.isfinite(m).all()


# ------------------------------------------------------------------------------- sine positions


def test_sine_position_encoding_shape_and_range():
    pe = sine_position_encoding_2d(3, 5, 16)
    assert pe.shape == (1, 15, 16) and pe.abs().max() <= 1
    assert not torch.allclose(pe[0, 0], pe[0, 1]) and not torch.allclose(pe[0, 0], pe[0, 5])
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding_2d(2, 2, 10)
