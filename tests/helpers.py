"""Assertions shared by several test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import torch

from vlcoattn.models import VLCoAttnConfig
from vlcoattn.text import CooBertConfig


def processor_for(tokenizer, size=32, max_text_len: int = 40, **kwargs):
    """A VLCoAttnProcessor with a ``size`` canvas (mean = std = 0.5 unless given) around a copy of
    ``tokenizer`` truncating at ``max_text_len``, for loader tests."""
    import copy

    from vlcoattn import VLCoAttnImageProcessor, VLCoAttnProcessor

    tokenizer = copy.copy(tokenizer)
    tokenizer.model_max_length = max_text_len
    return VLCoAttnProcessor(VLCoAttnImageProcessor(size=size, **kwargs), tokenizer)


def assert_cached_generation_exact(lm, input_ids, attention_mask, max_new_tokens: int, atol: float = 1e-5) -> None:
    """Greedy ``generate()`` with the KV cache == without it (tokens), and every step's logits == a full
    forward over the sequence so far (to ``atol``): a cache that ``generate()`` fails to hand back
    (as after transformers renamed ``past_key_values`` to ``cache``) decodes without context and fails."""
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None,
              attention_mask=attention_mask)
    cached = lm.generate(input_ids, use_cache=True, output_logits=True, return_dict_in_generate=True, **kw)
    torch.testing.assert_close(cached.sequences, lm.generate(input_ids, use_cache=False, **kw))
    width = input_ids.shape[1]
    ones = attention_mask.new_ones(attention_mask.shape[0], max_new_tokens)
    mask = torch.cat([attention_mask, ones], 1)
    for t, step_logits in enumerate(cached.logits):
        with torch.no_grad():
            full = lm(cached.sequences[:, : width + t], attention_mask=mask[:, : width + t], use_cache=False)
        torch.testing.assert_close(step_logits, full.logits[:, -1], atol=atol, rtol=atol)


def reference_beam_search(lm, prompt: torch.Tensor, num_beams: int, max_new_tokens: int) -> list[int]:
    """Beam search written out, for a (1, T) prompt and no end token: every step, each beam's full forward
    (no KV cache) scores all next tokens, and the ``num_beams`` best sums of log-probabilities go on.
    All beams are equally long, so no length penalty changes the ranking. Returns the best beam's new
    tokens."""
    seqs, scores = prompt, torch.zeros(1, dtype=torch.float64)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logp = lm(seqs, use_cache=False).logits[:, -1].double().log_softmax(-1)  # (beams, vocab)
        total = (scores[:, None] + logp).flatten()
        best = total.topk(num_beams).indices
        seqs = torch.cat([seqs[best // logp.shape[1]], (best % logp.shape[1])[:, None]], 1)
        scores = total[best]
    return seqs[0, prompt.shape[1]:].tolist()


# a tiny VLCoAttn model (random CooBERT + timm test backbone) and its inputs
VOCAB = 32


def text_config(d: int = 32, **kw) -> CooBertConfig:
    args = dict(
        vocab_size=VOCAB, hidden_size=d, num_hidden_layers=1, num_attention_heads=4, intermediate_size=2 * d,
        shared_key_dim=d // 2, max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    args.update(kw)
    return CooBertConfig(**args)


def tiny_config(**kw) -> VLCoAttnConfig:
    """A tiny VLCoAttnConfig; a sub-config dict in ``kw`` updates the tiny one's fields, other keys replace."""
    args = dict(
        text_config=text_config(), vision_config=dict(backbone="test_resnet", out_indices=[2]),
        coattention_config=dict(num_layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    )
    for key, value in kw.items():
        args[key] = {**args[key], **value} if isinstance(args.get(key), dict) else value
    return VLCoAttnConfig(**args)


def batch(B=2, T=6, H=64, W=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (B, T), generator=g)
    ids[:, 0] = 1  # [CLS]
    return ids, torch.randn(B, 3, H, W, generator=g)


class FakeHub:
    """The Hub's write calls answered here: ``HfApi.create_repo`` / ``create_commit`` (what transformers'
    ``push_to_hub`` and ``vlcoattn.hub`` call) are patched for the test, and each commit's files
    (path in the repo -> bytes) are kept in ``commits``; nothing goes over the network."""

    def __init__(self, monkeypatch) -> None:
        from huggingface_hub import HfApi

        self.commits: list[tuple[str, dict[str, bytes]]] = []
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "create_commit", self.create_commit)

    def create_repo(self, repo_id: str, **kwargs):
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id: str, operations, commit_message: str = "", **kwargs):
        from pathlib import Path

        from huggingface_hub import CommitInfo

        files = {}
        for op in operations:
            src = op.path_or_fileobj
            files[op.path_in_repo] = Path(src).read_bytes() if isinstance(src, str) else bytes(src)
        self.commits.append((commit_message, files))
        oid = f"{len(self.commits):040x}"
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}", commit_message=commit_message,
                          commit_description="", oid=oid)

    @property
    def files(self) -> dict[str, bytes]:
        """The repo after all commits: a later commit's file replaces an earlier one's, as on the Hub."""
        return {path: data for _, files in self.commits for path, data in files.items()}
