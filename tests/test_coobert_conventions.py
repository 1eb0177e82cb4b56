"""CooBERT against what transformers' common model tests check for every in-tree model: the same
behaviour a transformers user relies on (save / load, outputs, attention paths, embeddings, generation,
compilation), on tiny configs, for every CooBERT class where the convention applies."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from vlcoattn import (
    CooBertConfig,
    CooBertForCausalLM,
    CooBertForMaskedLM,
    CooBertForSequenceClassification,
    CooBertModel,
)
from vlcoattn.text import collaborative_attention_reference

V, D, L, H = 99, 32, 2, 4
CLASSES = [CooBertModel, CooBertForSequenceClassification, CooBertForMaskedLM, CooBertForCausalLM]
LM_CLASSES = [CooBertForMaskedLM, CooBertForCausalLM]
IDS = [c.__name__ for c in CLASSES]
LM_IDS = [c.__name__ for c in LM_CLASSES]


def config(**kw) -> CooBertConfig:
    """The issue's tiny config, compressed (D~k = 12 < D) so the shared key head is not BERT's."""
    base = dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=37,
                shared_key_dim=12, max_position_embeddings=32, num_labels=3, pad_token_id=0, eos_token_id=None)
    return CooBertConfig(**{**base, **kw})


def build(cls, seed: int = 0, **kw) -> PreTrainedModel:
    """A model in eval mode whose mixing / content bias / LM bias are random (no symmetric initialisation
    lets a comparison pass by accident)."""
    torch.manual_seed(seed)
    model = cls(config(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mixing" in name or "content_bias" in name or name.endswith("predictions.bias"):
                p.normal_(0, 0.5)
    return model.eval()


def inputs(batch: int = 3, length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (no padding id inside real tokens) and a right-padded mask of rows of lengths 7, 4, 2, ..."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, max(length - 3 * row, 1):] = 0
    return ids.masked_fill(mask == 0, 0), mask


def main_output(cls, out) -> torch.Tensor:
    """The output each class is for: hidden states (encoder) or logits (heads)."""
    return out.last_hidden_state if cls is CooBertModel else out.logits


def test_safe_serialization_flag_is_gone_from_save_pretrained():
    """transformers 5 always writes safetensors: ``save_pretrained`` has no ``safe_serialization`` argument
    any more (a passed one lands in ``**kwargs``). The checkpoint without safetensors is then a
    ``pytorch_model.bin``, which ``from_pretrained`` still reads (tested below)."""
    assert "safe_serialization" not in inspect.signature(PreTrainedModel.save_pretrained).parameters


# -- constructors and config options ------------------------------------------------------------------------


def test_constructors_leave_the_callers_config_alone():
    c = config()
    before = c.to_dict()
    models = [cls(c) for cls in CLASSES]  # the masked LM after the causal LM: the config is still bidirectional
    assert c.to_dict() == before and not c.is_decoder
    assert models[3].config.is_decoder and not models[2].config.is_decoder
    assert models[0].config is c  # only the causal LM, which must be causal, holds a copy


def test_a_transformers_users_first_calls():
    """Calls a BERT user makes without thinking: two heads from one config, hidden states asked for by
    the call or by the config (SDPA model), a resized masked LM."""
    kw = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    ids = torch.tensor([[5, 6, 7, 8]])
    c = CooBertConfig(**kw)
    CooBertForCausalLM(c)
    CooBertForMaskedLM(c)
    assert len(CooBertForMaskedLM(CooBertConfig(**kw))(ids, output_hidden_states=True).hidden_states) == 3
    assert len(CooBertModel(CooBertConfig(**kw, output_hidden_states=True))(ids).hidden_states) == 3
    m = CooBertForMaskedLM(CooBertConfig(**kw))
    m.resize_token_embeddings(109)
    assert m(ids).logits.shape == (1, 4, 109)


@pytest.mark.parametrize(
    ("option", "message"),
    [(dict(position_embedding_type="relative_key"), "position_embedding_type must be 'absolute'"),
     (dict(add_cross_attention=True), "add_cross_attention must be False")],
)
def test_bert_options_coobert_does_not_implement_are_rejected(option, message):
    with pytest.raises(ValueError, match=message):
        config(**option)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_encoder_hidden_states_are_rejected(cls):
    ids, _ = inputs()
    with pytest.raises(ValueError, match="encoder_hidden_states is not supported"):
        build(cls)(ids, encoder_hidden_states=torch.zeros(3, 5, D))


# -- save / load ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "pytorch_bin"])
@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_save_load_round_trip(tmp_path, cls, safetensors):
    model = build(cls)
    if safetensors:
        model.save_pretrained(tmp_path)
    else:  # what a checkpoint written without safetensors holds: the whole state dict, tied keys included
        model.config.save_pretrained(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = cls.from_pretrained(tmp_path).eval()
    assert (tmp_path / ("model.safetensors" if safetensors else "pytorch_model.bin")).is_file()
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys()
    for name in state:
        torch.testing.assert_close(reloaded[name], state[name], rtol=0, atol=0, msg=name)
    ids, mask = inputs()
    torch.testing.assert_close(main_output(cls, loaded(ids, attention_mask=mask)),
                               main_output(cls, model(ids, attention_mask=mask)), rtol=0, atol=0)


# -- forward conventions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_eval_is_deterministic_and_train_is_not(cls):
    model = build(cls, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    ids, mask = inputs()
    first = main_output(cls, model(ids, attention_mask=mask))
    torch.testing.assert_close(main_output(cls, model(ids, attention_mask=mask)), first, rtol=0, atol=0)
    model.train()
    assert not torch.allclose(main_output(cls, model(ids, attention_mask=mask)), first)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_a_padded_batch_equals_its_rows_one_at_a_time(cls):
    model = build(cls)
    ids, mask = inputs()
    batched = main_output(cls, model(ids, attention_mask=mask))
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        alone = main_output(cls, model(ids[row:row + 1, :n]))
        got = batched[row:row + 1] if cls is CooBertForSequenceClassification else batched[row:row + 1, :n]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_inputs_embeds_equal_input_ids(cls):
    model = build(cls)
    ids, mask = inputs()
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(main_output(cls, model(inputs_embeds=embeds, attention_mask=mask)),
                               main_output(cls, model(ids, attention_mask=mask)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(ids, inputs_embeds=embeds)


def layer_inputs_and_masks(model, ids, mask):
    """Every block's input hidden states, and the additive padding mask, for the literal reference."""
    out = model.base_model(ids, attention_mask=mask, output_hidden_states=True)
    additive = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(mask == 0, -1e9)[:, None, None, :]
    if model.config.is_decoder:
        T = ids.shape[1]
        additive = additive + torch.full((T, T), -1e9).triu(1)
    return out.hidden_states[:-1], additive


@pytest.mark.parametrize("source", ["call", "config"])
@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_hidden_states_and_attentions_with_their_shapes(cls, source):
    """From the call's keywords or the config's defaults (which needs the eager path, as transformers
    enforces): L + 1 hidden states (B, T, D), the last one the output; L attention maps (B, N_h, T, T),
    each the literal softmax of the collaborative scores on every real query row."""
    flags = dict(output_hidden_states=True, output_attentions=True)
    model = build(cls, **(dict(flags, attn_implementation="eager") if source == "config" else {}))
    ids, mask = inputs()
    out = model(ids, attention_mask=mask, **(flags if source == "call" else {}))
    B, T = ids.shape
    assert len(out.hidden_states) == L + 1 and all(h.shape == (B, T, D) for h in out.hidden_states)
    assert len(out.attentions) == L and all(a.shape == (B, H, T, T) for a in out.attentions)
    if cls is CooBertModel:
        assert out.hidden_states[-1] is out.last_hidden_state
    layer_inputs, additive = layer_inputs_and_masks(model, ids, mask)
    real = mask.bool()
    for block, x, probs in zip(model.base_model.encoder.layer, layer_inputs, out.attentions):
        _, expected = collaborative_attention_reference(block.attention.self, x, additive)
        torch.testing.assert_close(probs.transpose(1, 2)[real], expected.transpose(1, 2)[real], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(probs.sum(-1), torch.ones(B, H, T))
    plain = model(ids, attention_mask=mask, output_hidden_states=False, output_attentions=False)
    assert plain.hidden_states is None and plain.attentions is None
    as_tuple = model(ids, attention_mask=mask, return_dict=False, **flags)
    assert isinstance(as_tuple, tuple) and as_tuple[-1][0] is not None and len(as_tuple[-1]) == L


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_eager_equals_sdpa(cls):
    """The same weights on both paths; SDPA is the default, and an SDPA model asked for the attentions
    computes that call eagerly (BERT's SDPA path would return none)."""
    sdpa = build(cls)
    assert sdpa.config._attn_implementation == "sdpa"
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager"
    ids, mask = inputs()
    a = sdpa(ids, attention_mask=mask, output_attentions=True)
    b = eager(ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(main_output(cls, a), main_output(cls, b), atol=1e-5, rtol=1e-5)
    for x, y in zip(a.attentions, b.attentions, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    torch.testing.assert_close(main_output(cls, sdpa(ids, attention_mask=mask)), main_output(cls, b),
                               atol=1e-5, rtol=1e-5)


def loss_of(cls, model, ids, mask) -> torch.Tensor:
    if cls is CooBertModel:
        return model(ids, attention_mask=mask).last_hidden_state.pow(2).mean()
    if cls is CooBertForSequenceClassification:
        return model(ids, attention_mask=mask, labels=torch.tensor([0, 2, 1])).loss
    return model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_gradient_checkpointing_on_and_off_give_equal_gradients(cls):
    """With dropout on (the recomputation must replay the same masks)."""
    grads = []
    for checkpointing in (False, True):
        model = build(cls, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        ids, mask = inputs()
        torch.manual_seed(3)
        loss_of(cls, model, ids, mask).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


# -- embeddings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("new_size", [V + 10, V - 9], ids=["bigger", "smaller"])
@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_resize_token_embeddings(cls, new_size):
    model = build(cls)
    embeddings = model.get_input_embeddings().weight.detach().clone()
    bias = model.cls.predictions.bias.detach().clone() if cls in LM_CLASSES else None
    model.resize_token_embeddings(new_size)
    n = min(V, new_size)
    assert model.config.vocab_size == new_size and model.get_input_embeddings().weight.shape == (new_size, D)
    torch.testing.assert_close(model.get_input_embeddings().weight[:n], embeddings[:n], rtol=0, atol=0)
    ids, mask = inputs()
    ids = ids.clamp(max=new_size - 1)
    out = main_output(cls, model(ids, attention_mask=mask))
    if bias is not None:
        assert out.shape[-1] == new_size and model.cls.predictions.bias.shape == (new_size,)
        torch.testing.assert_close(model.cls.predictions.bias[:n], bias[:n], rtol=0, atol=0)
        assert not model.cls.predictions.bias[n:].any()  # new tokens start at the bias' initial value, 0
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("cls", LM_CLASSES, ids=LM_IDS)
def test_tied_weights_survive_save_and_load(tmp_path, cls):
    model = build(cls)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    assert "cls.predictions.decoder.weight" not in load_file(tmp_path / "model.safetensors")
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    untied = build(cls, tie_word_embeddings=False)
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
    untied.save_pretrained(tmp_path / "untied")
    assert "cls.predictions.decoder.weight" in load_file(tmp_path / "untied" / "model.safetensors")
    reloaded = cls.from_pretrained(tmp_path / "untied")
    torch.testing.assert_close(reloaded.get_output_embeddings().weight, untied.get_output_embeddings().weight)


# -- causal LM: left padding and generate() -----------------------------------------------------------------


def left_padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of lengths 6 and 3, left-padded with the padding id 0."""
    ids, _ = inputs(batch=2, length=6, seed=4)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids.masked_fill(mask == 0, 0), mask


def test_left_padding_leaves_the_last_tokens_logits_unchanged():
    lm = build(CooBertForCausalLM)
    ids, mask = left_padded_prompts()
    padded = lm(ids, attention_mask=mask).logits[:, -1]
    for row in range(2):
        alone = lm(ids[row:row + 1, mask[row].bool()]).logits[:, -1]
        torch.testing.assert_close(padded[row:row + 1], alone, atol=1e-5, rtol=1e-5)


def generate(lm, use_cache: bool, num_beams: int):
    ids, mask = left_padded_prompts()
    return lm.generate(
        ids, attention_mask=mask, max_new_tokens=4, do_sample=False, num_beams=num_beams, use_cache=use_cache,
        pad_token_id=0, return_dict_in_generate=True, output_scores=True, output_logits=True,
        output_hidden_states=True, output_attentions=True,
    )


def check_step_shapes(out, rows: int, prompt_len: int, use_cache: bool) -> None:
    """Per new token: L + 1 hidden states (rows, q, D) and L attention maps (rows, N_h, q, k), where q is the
    prompt at step 0 and then 1 token with the cache, the whole sequence so far without it."""
    assert len(out.scores) == len(out.logits) == len(out.hidden_states) == len(out.attentions) == 4
    for step, (hidden, attentions) in enumerate(zip(out.hidden_states, out.attentions)):
        keys = prompt_len + step
        queries = 1 if use_cache and step else keys
        assert len(hidden) == L + 1 and all(h.shape == (rows, queries, D) for h in hidden)
        assert len(attentions) == L and all(a.shape == (rows, H, queries, keys) for a in attentions)
        torch.testing.assert_close(attentions[-1].sum(-1), torch.ones(rows, H, queries))


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam"])
def test_generate_with_and_without_cache_and_dict_outputs(num_beams):
    """Same tokens and scores with and without the KV cache; scores, logits, hidden states and attentions
    for every step with their shapes; step 0's maps are a plain forward's."""
    lm = build(CooBertForCausalLM)
    cached, uncached = generate(lm, True, num_beams), generate(lm, False, num_beams)
    torch.testing.assert_close(cached.sequences, uncached.sequences, rtol=0, atol=0)
    for a, b in zip(cached.scores, uncached.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    rows = 2 * num_beams
    for out, use_cache in ((cached, True), (uncached, False)):
        check_step_shapes(out, rows, 6, use_cache)
    ids, mask = left_padded_prompts()
    if num_beams == 1:
        first = lm(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
        for got, expected in zip(cached.attentions[0], first.attentions, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cached.logits[0], first.logits[:, -1], atol=1e-5, rtol=1e-5)


# -- torch.compile --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CooBertModel, CooBertForCausalLM], ids=["CooBertModel", "CooBertForCausalLM"])
def test_compiled_forward_equals_eager(cls):
    """One graph (``fullgraph=True``: no break on the data, e.g. whether a batch has padding), and the
    compiled forward's outputs equal the eager ones, with padding and without."""
    torch._dynamo.reset()
    model = build(cls)
    compiled = torch.compile(model, fullgraph=True)
    ids, mask = inputs()
    with torch.no_grad():
        for m in (mask, torch.ones_like(mask)):
            torch.testing.assert_close(main_output(cls, compiled(ids, attention_mask=m)),
                                       main_output(cls, model(ids, attention_mask=m)), atol=1e-5, rtol=1e-5)
