"""CooBERT models: causality, KV cache, generate(), save/load through the Auto classes, bad configs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

import vlcoattn  # noqa: F401  (registers the Auto classes)
from vlcoattn import (
    CooBertConfig,
    CooBertForCausalLM,
    CooBertForMaskedLM,
    CooBertForSequenceClassification,
    CooBertModel,
)
from vlcoattn.text import CACHE_FIELD, output_cache

from helpers import assert_cached_generation_exact, reference_beam_search

V = 97


def tiny_config(**kw) -> CooBertConfig:
    base = dict(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, shared_key_dim=20, max_position_embeddings=64,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
                eos_token_id=3, bos_token_id=2)
    return CooBertConfig(**{**base, **kw})


def randomize(model):
    """Perturb the mixing/content bias so no test passes by the symmetric initialisation."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mixing" in name or "content_bias" in name:
                p.normal_(0, 0.5)
    return model.eval()


@pytest.fixture
def lm():
    torch.manual_seed(0)
    return randomize(CooBertForCausalLM(tiny_config()))


def test_causal_future_tokens_change_no_earlier_output(lm):
    ids = torch.randint(4, V, (2, 10))
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % V
    a, b = lm(ids).logits, lm(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_bidirectional_encoder_sees_the_future():
    model = randomize(CooBertModel(tiny_config()))
    ids = torch.randint(4, V, (1, 8))
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % V
    assert not torch.allclose(model(ids).last_hidden_state[:, 0], model(changed).last_hidden_state[:, 0])


def test_padding_changes_no_real_token_output():
    model = randomize(CooBertModel(tiny_config()))
    ids = torch.randint(4, V, (1, 6))
    alone = model(ids).last_hidden_state
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    torch.testing.assert_close(model(padded, attention_mask=mask).last_hidden_state[:, :6], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
@pytest.mark.parametrize("left_pad", [False, True])
def test_cached_incremental_decoding_equals_full_recomputation(lm, left_pad, name):
    ids = torch.randint(4, V, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    if left_pad:
        ids[1, :3] = 0
        mask[1, :3] = 0
    full = lm(ids, attention_mask=mask, use_cache=False).logits
    out = lm(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
    steps, cache = [out.logits], output_cache(out)
    for t in range(4, 9):  # the cache goes in under either name (transformers 5.24 renamed it to `cache`)
        out = lm(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], use_cache=True, **{name: cache})
        steps.append(out.logits)
        cache = output_cache(out)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=1e-5, rtol=1e-5)


def test_kv_cache_stores_one_shared_key_head(lm):
    cfg = lm.config
    cache = output_cache(lm(torch.randint(4, V, (3, 5)), use_cache=True))
    layer = cache.layers[0]
    assert layer.keys.shape == (3, 1, 5, cfg.shared_key_dim + cfg.num_attention_heads)
    assert layer.values.shape == (3, cfg.num_attention_heads, 5, cfg.hidden_size // cfg.num_attention_heads)
    key_numbers, value_numbers = lm.coobert.encoder.layer[0].attention.self.kv_cache_numbers_per_token()
    assert (key_numbers, value_numbers) == (20 + 4, 48)


def test_generate_greedy_with_and_without_cache(lm):
    prompt = torch.randint(4, V, (2, 4))
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with_cache = lm.generate(prompt, use_cache=True, **kw)
    assert with_cache.shape == (2, 12)
    torch.testing.assert_close(with_cache, lm.generate(prompt, use_cache=False, **kw))


def test_generate_cached_logits_equal_a_full_forward_at_every_step(lm):
    ids = torch.randint(4, V, (2, 5))
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0  # one left-padded prompt
    assert_cached_generation_exact(lm, ids, mask, max_new_tokens=8)


def test_the_returned_cache_holds_every_layer_and_position_and_continues_like_a_full_forward(lm):
    """The cache comes back under the field the installed transformers declares (``generate()`` reads it
    there), holds every layer's keys and values for every position so far, and decoding the next token
    with it gives the full forward's logits; both names at once are refused."""
    ids = torch.randint(4, V, (2, 4))
    out = lm(ids[:, :3], use_cache=True)
    assert CACHE_FIELD in out  # a ModelOutput holds its set fields only
    cache = output_cache(out)
    assert len(cache.layers) == lm.config.num_hidden_layers
    assert all(layer.keys.shape[-2] == layer.values.shape[-2] == 3 for layer in cache.layers)
    step = lm(ids[:, 3:], use_cache=True, **{CACHE_FIELD: cache})
    full = lm(ids, use_cache=False).logits
    torch.testing.assert_close(step.logits[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    assert all(layer.keys.shape[-2] == 4 for layer in output_cache(step).layers)
    with pytest.raises(ValueError, match="not both"):
        lm(torch.randint(4, V, (1, 1)), cache=output_cache(out), past_key_values=output_cache(out))


def test_generate_left_padded_batch_matches_single_prompts(lm):
    a, b = torch.randint(4, V, (1, 5)), torch.randint(4, V, (1, 3))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 2, dtype=torch.long), b], 1)])
    mask = (batch != 0).long()
    mask[0] = 1
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    out = lm.generate(batch, attention_mask=mask, **kw)
    torch.testing.assert_close(out[0, 5:], lm.generate(a, **kw)[0, 5:])
    torch.testing.assert_close(out[1, 5:], lm.generate(b, **kw)[0, 3:])


def test_generate_sampling_and_beam_search(lm):
    prompt = torch.randint(4, V, (1, 4))
    kw = dict(max_new_tokens=6, pad_token_id=0, eos_token_id=None)
    torch.manual_seed(123)
    s1 = lm.generate(prompt, do_sample=True, top_k=20, top_p=0.9, temperature=0.8, **kw)
    torch.manual_seed(123)
    s2 = lm.generate(prompt, do_sample=True, top_k=20, top_p=0.9, temperature=0.8, **kw)
    torch.testing.assert_close(s1, s2)
    beams = lm.generate(prompt, num_beams=3, do_sample=False, use_cache=True, **kw)
    torch.testing.assert_close(beams, lm.generate(prompt, num_beams=3, do_sample=False, use_cache=False, **kw))
    assert beams[0, 4:].tolist() == reference_beam_search(lm, prompt, num_beams=3, max_new_tokens=6)
    greedy = lm.generate(prompt, do_sample=False, **kw)
    assert not torch.equal(beams, greedy)  # this prompt's best beam is not the greedy path
    torch.testing.assert_close(lm.generate(prompt, num_beams=1, do_sample=False, **kw), greedy)


def test_generate_stops_at_eos(lm):
    prompt = torch.randint(4, V, (1, 4))
    first = lm.generate(prompt, max_new_tokens=1, do_sample=False, pad_token_id=0, eos_token_id=None)[0, -1].item()
    out = lm.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=first)
    assert out.shape[1] == 5 and out[0, -1].item() == first


AUTO = [
    (CooBertModel, AutoModel),
    (CooBertForSequenceClassification, AutoModelForSequenceClassification),
    (CooBertForMaskedLM, AutoModelForMaskedLM),
    (CooBertForCausalLM, AutoModelForCausalLM),
]


@pytest.mark.parametrize(("cls", "auto"), AUTO, ids=[c.__name__ for c, _ in AUTO])
def test_save_load_roundtrip_through_auto_classes(tmp_path, cls, auto):
    torch.manual_seed(0)
    model = randomize(cls(tiny_config(num_labels=3)))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), CooBertConfig)
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is cls
    ids = torch.randint(4, V, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    torch.testing.assert_close(loaded(ids, attention_mask=mask)[0], model(ids, attention_mask=mask)[0])
    if cls in (CooBertForMaskedLM, CooBertForCausalLM):  # tied: one tensor on disk, shared after load
        assert "cls.predictions.decoder.weight" not in load_file(tmp_path / "model.safetensors")
        assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


LOSS_CASES = {
    "single_label_classification": (3, torch.tensor([0, 1, 2, 1]), F.cross_entropy),
    "regression": (1, torch.tensor([0.5, -1.0, 2.0, 0.0]), lambda logits, y: F.mse_loss(logits.squeeze(-1), y)),
    "multi_label_classification": (3, torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 1], [1, 1, 1]]),
                                   F.binary_cross_entropy_with_logits),
}


@pytest.mark.parametrize("problem", list(LOSS_CASES))
def test_sequence_classification_losses_equal_torch_s_on_the_logits(problem):
    """The problem type is inferred from the labels as BERT infers it (one label: regression; integer
    labels: single label; float multi-hot: multi label) and the loss is torch's on the returned logits;
    with ``num_items_in_batch`` the single-label loss is the summed cross-entropy over that count."""
    num_labels, labels, reference = LOSS_CASES[problem]
    torch.manual_seed(0)
    model = randomize(CooBertForSequenceClassification(tiny_config(num_labels=num_labels)))
    ids = torch.randint(4, V, (4, 6))
    out = model(ids, labels=labels)
    assert model.config.problem_type == problem and out.logits.shape == (4, num_labels)
    torch.testing.assert_close(out.loss, reference(out.logits, labels))
    if problem == "single_label_classification":
        summed = F.cross_entropy(out.logits, labels, reduction="sum")
        torch.testing.assert_close(model(ids, labels=labels, num_items_in_batch=10).loss, summed / 10)
    out.loss.backward()
    assert model.coobert.encoder.layer[0].attention.self.mixing.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(hidden_size=50, num_attention_heads=4), "must be a multiple"),
        (dict(shared_key_dim=-3), "shared_key_dim must be > 0"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be > 0"),
    ],
)
def test_bad_config_raises_value_error_with_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_masked_lm_refuses_a_causal_config():
    with pytest.raises(ValueError, match="bidirectional"):
        CooBertForMaskedLM(tiny_config(is_decoder=True))


def test_gradient_checkpointing_gives_the_same_gradients():
    from vlcoattn.train.trainer import enable_gradient_checkpointing

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = CooBertForSequenceClassification(tiny_config(num_labels=3, hidden_dropout_prob=0.1)).train()
        if checkpointing:
            enable_gradient_checkpointing(model)
            assert all(layer.gradient_checkpointing for layer in model.coobert.encoder.layer)
        torch.manual_seed(1)
        model(torch.randint(4, V, (2, 7)), labels=torch.tensor([0, 2])).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)
