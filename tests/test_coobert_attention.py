"""Collaborative attention: SDPA fast path == einsum reference; MHA special case; masks; cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlcoattn.text.attention import (
    CollaborativeSelfAttention,
    build_attention_mask,
    collaborative_attention_reference,
)
from vlcoattn.text.convert import convert_layer


def random_attention(D=32, H=4, K=12, seed=0) -> CollaborativeSelfAttention:
    torch.manual_seed(seed)
    attn = CollaborativeSelfAttention(D, H, K).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn


def explicit_mask(padding: torch.Tensor, causal: bool) -> torch.Tensor:
    """Float mask written independently of build_attention_mask: 0 = visible, -1e9 = hidden."""
    B, T = padding.shape
    visible = padding.bool()[:, None, None, :].expand(B, 1, T, T)
    if causal:
        visible = visible & torch.ones(T, T, dtype=torch.bool).tril()
    return torch.where(visible, 0.0, -1e9)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shared_key_dim", [12, 32, 5])
def test_sdpa_and_eager_match_einsum_reference(causal, shared_key_dim, implementation):
    attn = random_attention(K=shared_key_dim)
    x = torch.randn(3, 7, 32)
    padding = torch.ones(3, 7, dtype=torch.long)
    padding[1, 5:] = 0
    padding[2, 2:] = 0
    mask, is_causal = build_attention_mask(padding, 7, 0, causal, x.dtype)
    fast, fast_probs = attn(x, mask, is_causal, attn_implementation=implementation)
    ref, probs = collaborative_attention_reference(attn, x, explicit_mask(padding, causal))
    real = padding.bool()
    torch.testing.assert_close(fast[real], ref[real], atol=1e-5, rtol=1e-5)
    assert probs.shape == (3, 4, 7, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4, 7))
    if implementation == "sdpa":
        assert fast_probs is None
    else:  # the eager path's probabilities are the literal softmax, on every real query row
        torch.testing.assert_close(fast_probs.transpose(1, 2)[real], probs.transpose(1, 2)[real], atol=1e-6, rtol=1e-5)


def test_sdpa_is_causal_flag_path_matches_reference():
    attn = random_attention()
    x = torch.randn(2, 6, 32)
    mask, is_causal = build_attention_mask(None, 6, 0, True, x.dtype)
    assert mask is None and is_causal  # the no-padding causal case uses SDPA's own masking
    ref, _ = collaborative_attention_reference(attn, x, explicit_mask(torch.ones(2, 6), True))
    for implementation in ("sdpa", "eager"):  # eager builds the causal mask SDPA's flag stands for
        torch.testing.assert_close(attn(x, mask, is_causal, attn_implementation=implementation)[0], ref, atol=1e-5, rtol=1e-5)


def test_concatenation_mixing_equals_standard_mha():
    """At D~k = D with block one-hot M (the exact conversion), collaborative == torch's MHA."""
    torch.manual_seed(1)
    D, H = 32, 4
    mha = nn.MultiheadAttention(D, H, bias=True, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_(0, 0.5)  # incl. key bias: must cancel in softmax
        mha.out_proj.weight.copy_(torch.eye(D))
        mha.out_proj.bias.zero_()
    Wq, Wk, Wv = mha.in_proj_weight.chunk(3)
    bq, _, bv = mha.in_proj_bias.chunk(3)
    params, err = convert_layer(Wq, bq, Wk, H, shared_key_dim=D)
    assert err < 1e-6
    attn = CollaborativeSelfAttention(D, H, D).eval()
    attn.load_state_dict({**params, "value.weight": Wv, "value.bias": bv})

    x = torch.randn(2, 9, D)
    padding = torch.ones(2, 9, dtype=torch.long)
    padding[1, 6:] = 0
    mask, _ = build_attention_mask(padding, 9, 0, False, x.dtype)
    expected, _ = mha(x, x, x, key_padding_mask=~padding.bool(), need_weights=False)
    torch.testing.assert_close(attn(x, mask)[0], expected, atol=1e-5, rtol=1e-5)


def test_cp_factors_define_the_scores():
    """Below full rank, the model's scores are exactly x T_hat[:, i, :] y^T + C_i(y) for the CP T_hat."""
    torch.manual_seed(2)
    D, H, K = 16, 4, 6
    Wq, Wk, bq = torch.randn(D, D), torch.randn(D, D), torch.randn(D)
    params, err = convert_layer(Wq, bq, Wk, H, shared_key_dim=K, n_iter_max=50)
    assert 0 < err < 1
    attn = CollaborativeSelfAttention(D, H, K).eval()
    attn.load_state_dict({**params, "value.weight": torch.eye(D), "value.bias": torch.zeros(D)}, strict=True)
    T_hat = torch.einsum("ra,hr,rb->ahb", params["query.weight"], params["mixing"], params["key.weight"])
    x = torch.randn(1, 5, D)
    scores = torch.einsum("qa,ahb,kb->hqk", x[0], T_hat, x[0]) + (x[0] @ params["content_bias.weight"].T).T[:, None]
    _, probs = collaborative_attention_reference(attn, x)
    torch.testing.assert_close(probs[0], (scores * attn.scale).softmax(-1), atol=1e-5, rtol=1e-4)


def test_build_attention_mask_cases():
    m, c = build_attention_mask(None, 4, 0, False, torch.float32)
    assert m is None and not c
    m, c = build_attention_mask(torch.ones(2, 5), 1, 4, True, torch.float32)
    assert m is None and not c  # one new token sees the whole past
    pad = torch.tensor([[0, 1, 1, 1, 1]])
    m, c = build_attention_mask(pad, 2, 3, True, torch.float32)
    assert m.shape == (1, 1, 2, 5) and not c
    visible = m[0, 0] == 0
    assert visible.tolist() == [[False, True, True, True, False], [False, True, True, True, True]]
