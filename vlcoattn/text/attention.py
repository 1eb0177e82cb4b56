"""Collaborative multi-head self-attention (Cordonnier, Loukas & Jaggi, ICLR 2021).

Standard multi-head attention gives every head its own query/key projection. Collaborative
attention shares ONE pair W~_Q, W~_K (D x D~k, no bias) between all heads; head i re-weights the
shared query dimensions with its row m_i of a mixing matrix M (N_h x D~k), and a content bias
C (D -> N_h) restores what BERT's query bias contributed:

    score_i(x, y) = scale * ( ((x W~_Q) ⊙ m_i) · (y W~_K)  +  C_i(y) ),   scale = 1/sqrt(D / N_h)

Values and the output projection stay per head, exactly as in BERT. The scale uses the ORIGINAL
head width D / N_h whatever D~k is (the reference code divides by sqrt(D~k / N_h), which inflates
the logits of a compressed model).

SDPA form. Appending one coordinate per head folds the content bias into a dot product:

    q'_i = [ (x W~_Q) ⊙ m_i ,  e_i ]        (B, N_h, T, D~k + N_h)
    k'   = [  y W~_K         ,  C(y) ]      (B, 1,   T, D~k + N_h)   one key head shared by all

so q'_i · k' = ((x W~_Q) ⊙ m_i) · (y W~_K) + C_i(y) and ``F.scaled_dot_product_attention(...,
scale=scale)`` computes exactly the scores above; causal and padding masks need nothing extra.
The eager path (``attn_implementation="eager"``) computes the same softmax explicitly and returns
the per-head probabilities, as transformers' eager attention does.
A KV cache stores k' (ONE head of width D~k + N_h) and the per-head values: at D=384, N_h=12,
D~k=192 that is 204 key numbers per token and layer instead of BERT's 384.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache

from ..utils.checks import check_multiple


def concatenation_mixing(num_heads: int, shared_key_dim: int) -> torch.Tensor:
    """M for 'concatenated heads': head i owns a contiguous block of the D~k shared dimensions.

    With D~k = D this makes collaborative attention equal to standard multi-head attention;
    it is also the initialisation of a CooBERT trained from scratch.
    """
    owner = torch.arange(shared_key_dim) * num_heads // shared_key_dim  # head owning each dimension
    return (owner[None, :] == torch.arange(num_heads)[:, None]).float()  # (N_h, D~k)


ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SDPA call written out: softmax(q' k'^T * scale + mask) v, keeping the probabilities.

    q (B, N_h, Tq, D~k + N_h), the shared key k (B, 1, Tk, D~k + N_h), v (B, N_h, Tk, d_h).
    Returns (context (B, N_h, Tq, d_h), probabilities (B, N_h, Tq, Tk), before dropout).
    """
    scores = (q @ k.transpose(-1, -2)) * scale  # the one key head broadcasts over the heads
    if is_causal and attn_mask is None:  # query i is the (Tk - Tq + i)-th key position
        Tq, Tk = scores.shape[-2:]
        visible = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
    if attn_mask is not None:
        scores = scores + attn_mask
    probs = scores.softmax(dim=-1)
    return F.dropout(probs, dropout) @ v, probs


class CollaborativeSelfAttention(nn.Module):
    """Collaborative self-attention: shared query/key projection, per-head mixing and values.

    Parameter names follow BERT where the roles match (``query``, ``key``, ``value``) so a
    converted checkpoint reads naturally; ``mixing`` is M and ``content_bias`` is C.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        shared_key_dim: int | None = None,
        dropout: float = 0.0,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        check_multiple("hidden_size", hidden_size, num_heads, "one slice per head")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.shared_key_dim = shared_key_dim or hidden_size
        self.scale = self.head_dim**-0.5  # original head width, whatever D~k is
        self.dropout = dropout
        self.layer_idx = layer_idx

        self.query = nn.Linear(hidden_size, self.shared_key_dim, bias=False)  # W~_Q
        self.key = nn.Linear(hidden_size, self.shared_key_dim, bias=False)  # W~_K
        self.mixing = nn.Parameter(torch.empty(num_heads, self.shared_key_dim))  # M, row m_i per head
        with torch.no_grad():  # from scratch: standard multi-head attention's mixing (in the default dtype)
            self.mixing.copy_(concatenation_mixing(num_heads, self.shared_key_dim))
        self.content_bias = nn.Linear(hidden_size, num_heads, bias=False)  # C
        self.value = nn.Linear(hidden_size, hidden_size)  # per-head W_V^i, b_V (concatenated)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries q' (B, N_h, T, D~k+N_h), shared key k' (B, 1, T, D~k+N_h), values v (B, N_h, T, d_h)."""
        B, T, _ = x.shape
        q = self.query(x)[:, None] * self.mixing[None, :, None, :]  # (B, N_h, T, D~k)
        e = torch.eye(self.num_heads, dtype=q.dtype, device=q.device)  # e_i picks head i's content bias
        e = e[None, :, None, :].expand(B, -1, T, -1)  # (B, N_h, T, N_h)
        q = torch.cat([q, e], dim=-1)  # (B, N_h, T, D~k + N_h)
        k = torch.cat([self.key(x), self.content_bias(x)], dim=-1)[:, None]  # (B, 1, T, D~k + N_h)
        v = self.value(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, N_h, T, d_h)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: Cache | None = None,
        attn_implementation: str = "sdpa",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) -> (context (B, T, D) before the output projection, probabilities or None).

        attn_mask: additive float mask broadcastable to (B, N_h, T, T_past + T), or None.
        is_causal: lower-triangular masking without a mask tensor (only when there is no past).
        cache: a transformers ``Cache``; this layer appends its k' and v and attends over the whole
            cached sequence.
        attn_implementation: "sdpa" (fused kernel, no probabilities) or "eager" (explicit softmax that
            also returns the per-head probabilities (B, N_h, T, T_past + T)), as transformers names them.
        """
        if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {attn_implementation!r}")
        B, T, _ = x.shape
        q, k, v = self.project(x)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        dropout = self.dropout if self.training else 0.0
        probs = None
        if attn_implementation == "eager":
            y, probs = eager_attention(q, k, v, attn_mask, is_causal, self.scale, dropout)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k.expand(-1, self.num_heads, -1, -1),  # the one shared key head, a stride-0 view
                v,
                attn_mask=attn_mask,
                dropout_p=dropout,
                is_causal=is_causal and attn_mask is None,
                scale=self.scale,
            )  # (B, N_h, T, d_h)
        return y.transpose(1, 2).reshape(B, T, -1), probs  # (B, T, D)

    def kv_cache_numbers_per_token(self) -> tuple[int, int]:
        """(key, value) numbers one token adds to this layer's KV cache: D~k + N_h and D."""
        return self.shared_key_dim + self.num_heads, self.num_heads * self.head_dim


def collaborative_attention_reference(
    attn: CollaborativeSelfAttention,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain einsum/softmax collaborative attention, straight from the equation (no folding).

    Returns (context (B, T, D), probabilities (B, N_h, T, T)); used by tests to check the SDPA
    path and by visualisations that need the attention map.
    """
    B, T, _ = x.shape
    xq, xk = attn.query(x), attn.key(x)  # (B, T, D~k)
    scores = torch.einsum("bqd,hd,bkd->bhqk", xq, attn.mixing, xk)  # ((x W~_Q) ⊙ m_i) · (y W~_K)
    scores = scores + attn.content_bias(x).transpose(1, 2)[:, :, None, :]  # + C_i(y)
    scores = scores * attn.scale
    if attn_mask is not None:
        scores = scores + attn_mask
    probs = scores.softmax(dim=-1)  # (B, N_h, T, T)
    v = attn.value(x).view(B, T, attn.num_heads, attn.head_dim)  # (B, T, N_h, d_h)
    y = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    return y.reshape(B, T, -1), probs


def build_attention_mask(
    padding_mask: torch.Tensor | None,
    query_len: int,
    past_len: int,
    causal: bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor | None, bool]:
    """The additive mask for SDPA, or None with ``is_causal`` when SDPA can mask by itself.

    padding_mask: (B, past_len + query_len) with 1 for real tokens, 0 for padding, or None.
    Returns (mask (B, 1, query_len, past_len + query_len) of 0 / dtype-min, is_causal flag).
    Masked entries get the dtype's minimum rather than -inf so a fully masked row (a padding
    query in a left-padded causal batch) stays finite instead of turning into NaN.
    """
    # under torch.compile the mask is always built: skipping it would make the graph depend on the data
    no_padding = padding_mask is None or (not torch.compiler.is_compiling() and bool(padding_mask.all()))
    if no_padding and (not causal or query_len == 1):
        return None, False  # every key visible (one new token sees its whole past)
    if no_padding and past_len == 0:
        return None, True  # plain lower-triangular: SDPA's is_causal
    key_len = past_len + query_len
    device = padding_mask.device if padding_mask is not None else None
    allowed = torch.ones(1, 1, query_len, key_len, dtype=torch.bool, device=device)
    if causal:  # query i (absolute position past_len + i) sees keys j <= past_len + i
        allowed = torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(past_len)[None, None]
    if not no_padding:
        allowed = allowed & padding_mask.bool()[:, None, None, :]  # (B, 1, Tq, Tk)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    ), False
