"""Whole VLCoAttn VQA model, forward+backward throughput, vs a plain-transformers baseline.

    python benchmarks/vl_model.py [--batch 8] [--repeats 5] [--image 224]

Demo size: MiniLM-sized text encoder (6 layers, D=384, 12 heads, FFN 1536; CooBERT with D~k=192),
EfficientNet-Lite0 backbone (last stage, stride 32), 2 SMCA fusion layers of width 384, VQA head,
T=20 tokens. Baseline, built in the same run at equal width: the same timm backbone + 1x1 conv,
transformers' ``BertModel`` (same size, SDPA) and 2 fusion layers made of ``nn.MultiheadAttention``
(text self-attention, text->image cross-attention with sine positions on the keys, FFN on both
streams, post-LN) and the same VQA head. Both feed the backbone channels-last images (our default,
``vision_config.channels_last``); one more row runs ours on NCHW images to show what that layout buys. Reported: samples/s of a training step (forward, loss,
backward; no optimizer) and the ratio to the baseline, medians of interleaved runs.
"""

from __future__ import annotations

import argparse
from functools import partial

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from vlcoattn.fusion import sine_position_encoding_2d
from vlcoattn.models import VLCoAttnConfig, VLCoAttnForQuestionAnswering
from vlcoattn.text import CooBertConfig
from vlcoattn.utils.reporting import machine, markdown_table

from timing import interleaved_medians

D, HEADS, FFN, TEXT_LAYERS, FUSION_LAYERS, T, ANSWERS = 384, 12, 1536, 6, 2, 20, 100


class BaselineFusionLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.ffn_t = nn.Sequential(nn.Linear(D, FFN), nn.GELU(), nn.Linear(FFN, D))
        self.ffn_v = nn.Sequential(nn.Linear(D, FFN), nn.GELU(), nn.Linear(FFN, D))
        self.norms = nn.ModuleList(nn.LayerNorm(D) for _ in range(4))

    def forward(self, t, pad, v, pos):
        t = self.norms[0](t + self.self_attn(t, t, t, key_padding_mask=pad, need_weights=False)[0])
        t = self.norms[1](t + self.cross_attn(t, v + pos, v + pos, need_weights=False)[0])
        return self.norms[2](t + self.ffn_t(t)), self.norms[3](v + self.ffn_v(v))


class Baseline(nn.Module):
    """timm backbone + BertModel + nn.MultiheadAttention co-attention + VQA head, equal width."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(-1,))
        self.proj = nn.Sequential(nn.Conv2d(self.backbone.feature_info.channels()[-1], D, 1), nn.GroupNorm(32, D))
        cfg = BertConfig(hidden_size=D, num_hidden_layers=TEXT_LAYERS, num_attention_heads=HEADS,
                         intermediate_size=FFN, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        cfg._attn_implementation = "sdpa"
        self.text = BertModel(cfg, add_pooling_layer=False)
        self.layers = nn.ModuleList(BaselineFusionLayer() for _ in range(FUSION_LAYERS))
        self.head = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.LayerNorm(2 * D), nn.Linear(2 * D, ANSWERS))

    def forward(self, input_ids, pixel_values, attention_mask, labels):
        t = self.text(input_ids, attention_mask=attention_mask).last_hidden_state
        f = self.proj(self.backbone(pixel_values.contiguous(memory_format=torch.channels_last))[-1])  # (B, D, H, W)
        v = f.flatten(2).transpose(1, 2)
        pos = sine_position_encoding_2d(f.shape[2], f.shape[3], D)
        pad = attention_mask == 0
        for layer in self.layers:
            t, v = layer(t, pad, v, pos)
        return F.cross_entropy(self.head(t[:, 0]), labels)


def ours(spatial_prior: str, channels_last: bool = True) -> VLCoAttnForQuestionAnswering:
    text = CooBertConfig(vocab_size=30522, hidden_size=D, num_hidden_layers=TEXT_LAYERS, num_attention_heads=HEADS,
                         intermediate_size=FFN, shared_key_dim=D // 2)
    cfg = VLCoAttnConfig(
        text_config=text, vision_config=dict(backbone="tf_efficientnet_lite0", channels_last=channels_last),
        coattention_config=dict(num_layers=FUSION_LAYERS, intermediate_size=FFN, spatial_prior=spatial_prior,
                                two_way=False, prior_sharing="per_head"),
        heads_config=dict(answer_vocab=[f"a{i}" for i in range(ANSWERS)], answer_loss="ce", answer_pooling="cls"),
    )
    return VLCoAttnForQuestionAnswering(cfg).train()


def train_step(model, ids, px, mask, labels) -> None:
    model.zero_grad(set_to_none=True)
    if isinstance(model, Baseline):
        loss = model(ids, px, mask, labels)
    else:
        loss = model(ids, px, attention_mask=mask, labels=labels).loss
    loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    B = args.batch
    ids = torch.randint(1000, 30000, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[B // 2 :, T - 6 :] = 0  # half the batch padded
    px = torch.randn(B, 3, args.image, args.image)
    labels = torch.randint(0, ANSWERS, (B,))
    models = {"baseline": Baseline().train(), "VLCoAttn (gaussian)": ours("gaussian"), "VLCoAttn (none)": ours("none"),
              "VLCoAttn (gaussian, NCHW backbone)": ours("gaussian", channels_last=False)}
    fns = {name: partial(train_step, m, ids, px, mask, labels) for name, m in models.items()}
    t = interleaved_medians(fns, repeats=args.repeats, warmup=1)
    rows = []
    for name, m in models.items():
        n = sum(p.numel() for p in m.parameters())
        rows.append([name, f"{n / 1e6:.1f}M", f"{t[name] * 1e3:.0f}", f"{B / t[name]:.1f}",
                     f"{t['baseline'] / t[name]:.2f}"])
    print(f"Machine: {machine()}")
    print(f"Training step (forward+loss+backward), batch {B}, T={T}, image {args.image}x{args.image}, "
          f"median of {args.repeats}")
    print(markdown_table(["model", "params", "ms/step", "samples/s", "throughput vs baseline"], rows))


if __name__ == "__main__":
    main()
