"""Convert a HF BERT checkpoint into CooBERT (docs/design.md §2).

Per layer, the bilinear forms of the heads form a tensor T (D x N_h x D):

    T[:, i, :] = W_Q^i W_K^i^T            (W_Q^i, W_K^i: the D x d_h slices of head i)

A rank-D~k CP decomposition T ≈ Σ_r a_r ⊗ b_r ⊗ c_r gives the collaborative parameters:
W~_Q = A (D x D~k), M = B (N_h x D~k), W~_K = C (D x D~k), because then
(x W~_Q ⊙ m_i) · (y W~_K) = x A diag(m_i) C^T y^T ≈ x T[:, i, :] y^T. At D~k = D the copy is exact:
W~_Q = W_Q, W~_K = W_K and M is the concatenation mixing. The query bias survives only as the
content bias C_i(y) = y · W_K^i b_Q^i (every other bias term is constant over keys and cancels in
the softmax). Values, output projections, FFNs, embeddings and heads are copied unchanged: CooBERT
uses BERT's parameter names everywhere else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedModel
from transformers import (
    BertForMaskedLM as _BertForMaskedLM,
)
from transformers import (
    BertForSequenceClassification as _BertForSequenceClassification,
)
from transformers import (
    BertLMHeadModel as _BertLMHeadModel,
)

from .attention import concatenation_mixing
from .configuration_coobert import CooBertConfig
from .modeling_coobert import (
    CooBertForCausalLM,
    CooBertForMaskedLM,
    CooBertForSequenceClassification,
    CooBertModel,
)

logger = logging.getLogger(__name__)

# BERT architecture -> (transformers class to load it, CooBERT class to build)
ARCHITECTURES: dict[str, tuple[type[PreTrainedModel], type[PreTrainedModel]]] = {
    "BertModel": (BertModel, CooBertModel),
    "BertForMaskedLM": (_BertForMaskedLM, CooBertForMaskedLM),
    "BertLMHeadModel": (_BertLMHeadModel, CooBertForCausalLM),
    "BertForSequenceClassification": (_BertForSequenceClassification, CooBertForSequenceClassification),
}

DEFAULT_SENTENCES = [
    "A man is riding a red bicycle down the street.",
    "Two dogs play with a ball on the grass.",
    "The stock market fell sharply after the announcement.",
    "What color is the large cube left of the sphere?",
    "She plays the violin in the city orchestra every weekend.",
    "The small blue triangle.",
]


@dataclasses.dataclass
class ConversionReport:
    """What a conversion lost: per-layer CP error of T and output agreement on sentences."""

    shared_key_dim: int
    hidden_size: int
    num_heads: int
    layer_rel_errors: list[float]
    mean_cosine: float = float("nan")  # mean-pooled sentence embeddings, CooBERT vs BERT
    min_cosine: float = float("nan")
    max_abs_diff: float = float("nan")  # last hidden state, real tokens
    attention_params_bert: int = 0  # query/key parameters per layer
    attention_params_coobert: int = 0

    def lines(self) -> list[str]:
        saved = 1 - self.attention_params_coobert / self.attention_params_bert
        out = [f"shared_key_dim D~k = {self.shared_key_dim} (hidden {self.hidden_size}, {self.num_heads} heads)"]
        out += [f"  layer {i}: relative error of W_Q W_K^T tensor = {e:.4f}" for i, e in enumerate(self.layer_rel_errors)]
        out.append(
            f"  query/key parameters per layer: BERT {self.attention_params_bert:,} -> "
            f"CooBERT {self.attention_params_coobert:,} ({saved:+.1%} saved)"
        )
        out.append(
            f"  output vs BERT: mean cosine {self.mean_cosine:.5f} (min {self.min_cosine:.5f}), "
            f"max |diff| last hidden state {self.max_abs_diff:.2e}"
        )
        return out


def read_bert_config(src: str | Path) -> BertConfig:
    """Load and check ``src/config.json``: a clear error when ``src`` is not a BERT checkpoint dir."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"BERT checkpoint dir {src} does not exist")
    if not src.is_dir():
        raise NotADirectoryError(f"{src} is not a directory (expected a HF BERT checkpoint dir)")
    cfg_file = src / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{src} is not a HF checkpoint dir: it has no config.json")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file} is not valid JSON: {e}") from e
    if raw.get("model_type") != "bert":
        raise ValueError(f"{src} is not a BERT checkpoint: model_type is {raw.get('model_type')!r}, expected 'bert'")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{src}: only absolute position embeddings are supported, got {raw['position_embedding_type']!r}")
    if not any((src / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        raise ValueError(f"{src} has no model.safetensors weights")
    return BertConfig.from_pretrained(src)


def coobert_config_from_bert(bert_config: BertConfig, shared_key_dim: int | None) -> CooBertConfig:
    """CooBertConfig with every BERT field that CooBERT has, plus ``shared_key_dim``."""
    fields = {f.name for f in dataclasses.fields(CooBertConfig)}
    kwargs = {k: v for k, v in bert_config.to_dict().items() if k in fields and k not in ("architectures",)}
    kwargs["shared_key_dim"] = shared_key_dim or bert_config.hidden_size
    if not 0 < kwargs["shared_key_dim"] <= bert_config.hidden_size:
        raise ValueError(f"shared_key_dim must be in 1..{bert_config.hidden_size}, got {shared_key_dim}")
    return CooBertConfig(**kwargs)


def bilinear_tensor(q_weight: torch.Tensor, k_weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """T (D, N_h, D) with T[:, i, :] = W_Q^i W_K^i^T, from nn.Linear weights (D_out = D, D_in = D)."""
    D = q_weight.shape[1]
    wq = q_weight.view(num_heads, -1, D)  # (N_h, d_h, D): row j of head i maps x -> q_ij
    wk = k_weight.view(num_heads, -1, D)
    return torch.einsum("hja,hjb->ahb", wq, wk)


def content_bias_weight(q_bias: torch.Tensor, k_weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """C (N_h, D): row i is W_K^i b_Q^i, the only query-bias term that varies over keys."""
    D = k_weight.shape[1]
    return torch.einsum("hjd,hj->hd", k_weight.view(num_heads, -1, D), q_bias.view(num_heads, -1))


def blockwise_svd_factors(T: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` CP factors whose mixing is one-hot: top singular triplets of the head slices.

    Each kept triplet (σ, u, v) of slice T[:, i, :] becomes one shared dimension owned by head i
    (a = u√σ, c = v√σ, m_i = 1); triplets are chosen globally by σ, which minimises the Frobenius
    error among such block-structured factorisations. ALS then refines the mixing to be dense.
    """
    U, S, Vh = torch.linalg.svd(T.permute(1, 0, 2).double())  # (H, D, D), (H, D), (H, D, D)
    flat = torch.topk(S.flatten(), rank).indices
    head, j = flat // S.shape[1], flat % S.shape[1]
    root = S[head, j].sqrt()
    A = (U[head, :, j] * root[:, None]).T  # (D, rank)
    C = (Vh[head, j, :] * root[:, None]).T  # (D, rank)
    M = torch.zeros(T.shape[1], rank, dtype=A.dtype)
    M[head, torch.arange(rank)] = 1.0
    return A, M, C


def cp_decompose(T: torch.Tensor, rank: int, n_iter_max: int = 10) -> tuple[torch.Tensor, ...]:
    """Rank-``rank`` CP decomposition of T (D, N_h, D) with tensorly's ``parafac``: returns A, M, C.

    ALS starts from :func:`blockwise_svd_factors` (deterministic, and already a good collaborative
    factorisation: on MiniLM at rank 192 it gives 0.28 relative error where tensorly's random init
    reaches 0.40 after 30 iterations); a few iterations then make the mixing dense.
    """
    try:
        import tensorly as tl
        from tensorly.cp_tensor import CPTensor
        from tensorly.decomposition import parafac
    except ImportError as e:
        raise ImportError("CP decomposition needs tensorly: pip install 'vlcoattn[convert]'") from e
    T = T.double()
    init = CPTensor((torch.ones(rank, dtype=T.dtype), list(blockwise_svd_factors(T, rank))))
    backend = tl.get_backend()
    tl.set_backend("pytorch")
    try:
        weights, (A, M, C) = parafac(T, rank=rank, n_iter_max=n_iter_max, init=init, tol=1e-8)
    finally:
        tl.set_backend(backend)
    return A.float(), (M * weights[None]).float(), C.float()  # weights folded into the mixing matrix


def convert_layer(
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    num_heads: int,
    shared_key_dim: int,
    n_iter_max: int = 10,
) -> tuple[dict[str, torch.Tensor], float]:
    """One BERT layer's query/key -> CooBERT's ``query``, ``key``, ``mixing``, ``content_bias`` + CP error."""
    D = q_weight.shape[1]
    T = bilinear_tensor(q_weight, k_weight, num_heads)
    if shared_key_dim == D:  # exact: concatenated heads
        A, M, C = q_weight.T, concatenation_mixing(num_heads, D), k_weight.T
    else:
        A, M, C = cp_decompose(T, shared_key_dim, n_iter_max=n_iter_max)
    T_hat = torch.einsum("ar,hr,br->ahb", A, M, C)
    rel_err = (torch.linalg.norm(T - T_hat) / torch.linalg.norm(T)).item()
    params = {
        "query.weight": A.T.contiguous(),  # nn.Linear weight: (D~k, D)
        "key.weight": C.T.contiguous(),
        "mixing": M.contiguous(),
        "content_bias.weight": content_bias_weight(q_bias, k_weight, num_heads),
    }
    return params, rel_err


def convert_state_dict(
    bert_state: dict[str, torch.Tensor],
    config: CooBertConfig,
    base_prefix: str = "",
    n_iter_max: int = 10,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Map a transformers BERT state dict onto CooBERT names; attention query/key re-factorised.

    ``base_prefix`` is where the encoder lives in the target ("" for CooBertModel, "coobert." for
    the head classes); BERT's own "bert." prefix is dropped first.
    """
    base = {k.removeprefix("bert."): v for k, v in bert_state.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in base.items():
        if name == "cls.predictions.decoder.bias" or ".attention.self.query." in name or ".attention.self.key." in name:
            continue  # BERT's alias of cls.predictions.bias; query/key are re-factorised below
        is_encoder = name.split(".")[0] in ("embeddings", "encoder", "pooler")
        out[(base_prefix if is_encoder else "") + name] = tensor
    errors = []
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}.attention.self."
        layer, err = convert_layer(
            base[p + "query.weight"], base[p + "query.bias"], base[p + "key.weight"],
            config.num_attention_heads, config.shared_key_dim, n_iter_max=n_iter_max,
        )
        errors.append(err)
        out.update({base_prefix + p + k: v for k, v in layer.items()})
    return out, errors


@torch.no_grad()
def output_agreement(
    bert: PreTrainedModel, coobert: PreTrainedModel, tokenizer, sentences: list[str]
) -> tuple[float, float, float]:
    """(mean cosine, min cosine, max abs diff) of the two encoders on ``sentences`` (padded batch)."""
    bert_base = getattr(bert, "bert", bert).eval()
    coo_base = getattr(coobert, "coobert", coobert).eval()
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    mask = batch["attention_mask"]
    h_bert = bert_base(**batch).last_hidden_state
    h_coo = coo_base(batch["input_ids"], mask, batch.get("token_type_ids")).last_hidden_state
    m = mask[..., None].float()
    pooled_bert, pooled_coo = (h_bert * m).sum(1) / m.sum(1), (h_coo * m).sum(1) / m.sum(1)
    cos = F.cosine_similarity(pooled_bert, pooled_coo, dim=-1)
    max_diff = ((h_bert - h_coo).abs() * m).max().item()
    return cos.mean().item(), cos.min().item(), max_diff


def convert_bert_to_coobert(
    src: str | Path,
    shared_key_dim: int | None = None,
    sentences: list[str] | None = None,
    n_iter_max: int = 10,
) -> tuple[PreTrainedModel, ConversionReport]:
    """Load the BERT checkpoint in ``src`` and return (CooBERT model, report).

    The CooBERT class follows the checkpoint's architecture (BertModel -> CooBertModel,
    BertForMaskedLM -> CooBertForMaskedLM, ...). ``shared_key_dim`` None means exact (= hidden size).
    """
    bert_config = read_bert_config(src)
    arch = (bert_config.architectures or ["BertModel"])[0]
    if arch not in ARCHITECTURES:
        raise ValueError(f"{src}: architecture {arch!r} is not convertible; supported: {', '.join(ARCHITECTURES)}")
    bert_cls, coo_cls = ARCHITECTURES[arch]
    config = coobert_config_from_bert(bert_config, shared_key_dim)
    bert = bert_cls.from_pretrained(src).eval()
    coobert = coo_cls(config).eval()
    base_prefix = "" if coo_cls is CooBertModel else coobert.base_model_prefix + "."
    state, errors = convert_state_dict(bert.state_dict(), config, base_prefix, n_iter_max)
    missing, unexpected = coobert.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{src}: weights do not map onto {coo_cls.__name__}: missing {missing}, unexpected {unexpected}")

    D, H, K = config.hidden_size, config.num_attention_heads, config.shared_key_dim
    report = ConversionReport(
        shared_key_dim=K, hidden_size=D, num_heads=H, layer_rel_errors=errors,
        attention_params_bert=2 * (D * D + D), attention_params_coobert=2 * D * K + H * K + H * D,
    )
    tokenizer = AutoTokenizer.from_pretrained(src)
    report.mean_cosine, report.min_cosine, report.max_abs_diff = output_agreement(
        bert, coobert, tokenizer, sentences or DEFAULT_SENTENCES
    )
    return coobert, report


def convert_bert_dir(
    src: str | Path,
    dst: str | Path,
    shared_key_dim: int | None = None,
    sentences: list[str] | None = None,
    n_iter_max: int = 10,
) -> ConversionReport:
    """Convert ``src`` and write a CooBERT dir (config, model.safetensors, tokenizer, report) to ``dst``."""
    model, report = convert_bert_to_coobert(src, shared_key_dim, sentences, n_iter_max)
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise NotADirectoryError(f"--dst {dst} exists and is not a directory")
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    (dst / "conversion_report.json").write_text(json.dumps(dataclasses.asdict(report), indent=2))
    return report
